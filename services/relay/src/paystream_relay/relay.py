"""Transactional outbox relay: publishes committed outbox rows to Kafka, in order, then
marks them published.

A batch claims whole shards (rows of one key always share a shard) with SKIP LOCKED, so
several relays split the work without publishing a row twice or reordering a key. A crash
between the Kafka acknowledgement and the commit republishes that batch with the same
CloudEvent ids: consumers dedupe on them (at-least-once, never lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from psycopg.rows import dict_row

from paystream_messaging.cloudevents_codec import Event, KafkaRecord

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "paystream_outbox"

_CLAIM_SHARDS = """
SELECT s.shard FROM outbox_shards s
WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.shard = s.shard AND o.published_at IS NULL)
ORDER BY s.shard
FOR UPDATE OF s SKIP LOCKED
LIMIT %(max_shards)s
"""
_PENDING_ROWS = """
SELECT id, tenant_id, topic, key, event_id, event_type, source, occurred_at, data, traceparent
FROM outbox
WHERE shard = ANY(%(shards)s) AND published_at IS NULL
ORDER BY id
LIMIT %(limit)s
"""
# clock_timestamp(): the moment Kafka had acknowledged the batch, not when it began.
_MARK_PUBLISHED = "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%(ids)s)"


class PublishError(RuntimeError):
    """Kafka did not acknowledge every record of a batch; the batch stays unpublished."""


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    failed_batches: int = 0
    last_batch_at: float = field(default_factory=time.monotonic)


@dataclass
class OutboxRelay:
    conninfo: str
    new_producer: Callable[[], Producer]
    topic_for: Callable[[str], str]
    encode: Callable[[Event], KafkaRecord]
    batch_size: int = 500
    max_shards: int = 16
    flush_timeout_s: float = 30.0
    stats: RelayStats = field(default_factory=RelayStats)
    _producer: Producer | None = field(default=None, init=False, repr=False)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = self.new_producer()
        return self._producer

    def publish_batch(self, conn: psycopg.Connection[dict[str, Any]]) -> int:
        """Publish one batch; returns the number of rows marked published."""
        with conn.transaction():
            shards = [
                r["shard"] for r in conn.execute(_CLAIM_SHARDS, {"max_shards": self.max_shards})
            ]
            if not shards:
                return 0
            rows = conn.execute(
                _PENDING_ROWS, {"shards": shards, "limit": self.batch_size}
            ).fetchall()
            if not rows:
                return 0
            self._publish(rows)
            conn.execute(_MARK_PUBLISHED, {"ids": [r["id"] for r in rows]})
        self.stats.published += len(rows)
        self.stats.batches += 1
        self.stats.last_batch_at = time.monotonic()
        return len(rows)

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
            if err is not None:
                errors.append(str(err))

        for row in rows:
            record = self.encode(_event_of(row))
            while True:
                try:
                    self.producer.produce(
                        self.topic_for(row["topic"]),
                        value=record.value,
                        key=record.key,
                        headers=list[tuple[str, str | bytes | None]](record.headers),
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self.producer.poll(0.1)
            self.producer.poll(0)
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining or errors:
            self.stats.failed_batches += 1
            detail = errors[0] if errors else f"{remaining} records unacknowledged"
            raise PublishError(f"batch of {len(rows)} not acknowledged: {detail}")

    def run(self, stop: threading.Event, idle_poll_s: float = 1.0, linger_s: float = 0.0) -> None:
        """Publish until `stop` is set; sleeps on LISTEN/NOTIFY when there is nothing to do."""
        with (
            psycopg.connect(self.conninfo, row_factory=dict_row) as conn,
            psycopg.connect(self.conninfo, autocommit=True) as listener,
        ):
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            backoff = 0.5
            while not stop.is_set():
                try:
                    published = self.publish_batch(conn)
                    backoff = 0.5
                except PublishError as exc:
                    log.error("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    # A producer that failed a batch may be fenced or fatally broken after
                    # an outage; the batch is retried on a fresh one (same event ids).
                    self._producer = None
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if published < self.batch_size:
                    _wait_for_notify(listener, stop, idle_poll_s)
                    if linger_s:  # let the commits of the next moments join this batch
                        stop.wait(linger_s)


def _wait_for_notify(
    listener: psycopg.Connection[Any], stop: threading.Event, idle_s: float
) -> None:
    """Sleep until an outbox insert commits, `stop` is set, or `idle_s` passes.

    Rows committed after our last query raise a notification we have not read yet, so
    this cannot miss them. Short slices keep shutdown prompt (notifies() retries EINTR).
    """
    deadline = time.monotonic() + idle_s
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if any(True for _ in listener.notifies(timeout=min(remaining, 0.25), stop_after=1)):
            return


def _event_of(row: dict[str, Any]) -> Event:
    return Event(
        id=str(row["event_id"]),
        source=row["source"],
        type=row["event_type"],
        time=row["occurred_at"],
        tenant_id=str(row["tenant_id"]),
        partition_key=row["key"],
        data=row["data"],
        traceparent=row["traceparent"],
    )
