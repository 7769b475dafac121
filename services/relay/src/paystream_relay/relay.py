"""Transactional outbox relay: publishes committed outbox rows to Kafka, in order, marking
them published chunk by chunk.

A batch claims whole shards (rows of one key always share a shard) with FOR UPDATE SKIP
LOCKED and holds those locks until the batch is done, so several relays split the work
without publishing a row twice or reordering a key. Within a batch the rows go out in
chunks of `publish_chunk`: a chunk is produced and flushed (every record acknowledged), then
marked published at once on a second, autocommit connection (that UPDATE touches outbox
rows, not the locked shard rows, so it does not wait for the claim), and only then is the
next chunk produced. Per-key order holds, and a crash at any point (kill -9, the database
lost mid-batch, a Kafka failure) leaves the chunks before it marked, so at most the one
chunk in flight is republished, with the same CloudEvent ids. Delivery is at-least-once,
never lost: consumers dedupe on the `ce_id` header. (The marks are committed without
waiting for the WAL flush: a PostgreSQL crash can lose the last ones, which only
republishes those chunks.)

A database that goes away is an outage, not a crash: the relay logs one warning, reconnects
its connections with a capped backoff, and resumes from what the outbox says is unpublished
(also at startup, before the database is reachable). A Kafka failure retries the batch on a
fresh producer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from psycopg.rows import TupleRow, dict_row

from paystream_messaging.cloudevents_codec import Event, KafkaRecord
from paystream_relay.db_outage import TRANSIENT_DB_ERRORS, DbOutage
from paystream_telemetry.messages import MessageSpans

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
# clock_timestamp(): the moment Kafka had acknowledged the chunk, not when the batch began.
_MARK_PUBLISHED = "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%(ids)s)"

WorkConnection = psycopg.Connection[dict[str, Any]]
MarkConnection = psycopg.Connection[TupleRow]


class PublishError(RuntimeError):
    """Kafka did not acknowledge every record of a chunk; the chunk stays unpublished."""


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
    # Rows flushed and marked published together: a crash republishes at most this many.
    publish_chunk: int = 50
    flush_timeout_s: float = 30.0
    # Bounds each connection attempt, so a stop request is seen during an outage.
    connect_timeout_s: int = 5
    stats: RelayStats = field(default_factory=RelayStats)
    db_outage: DbOutage = field(default_factory=DbOutage)
    _producer: Producer | None = field(default=None, init=False, repr=False)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = self.new_producer()
        return self._producer

    def publish_batch(self, conn: WorkConnection, marker: MarkConnection) -> int:
        """Publish one batch; returns the number of rows marked published.

        `conn` (not autocommit) holds the claim, and with it the shard locks, until the
        batch is done; `marker` (autocommit) makes each chunk's mark durable as soon as Kafka
        has acknowledged the chunk. On any error the chunks before it stay marked, the claim
        is rolled back and the rest of the batch is left for the next one.
        """
        if conn.autocommit or not marker.autocommit:
            raise ValueError("publish_batch needs a transactional conn and an autocommit marker")
        try:
            published = self._publish_claimed(conn, marker)
        except BaseException:
            _rollback_quietly(conn)
            raise
        conn.commit()  # only releases the shard locks: nothing was written on `conn`
        if published:
            self.stats.batches += 1
            self.stats.last_batch_at = time.monotonic()
        return published

    def _publish_claimed(self, conn: WorkConnection, marker: MarkConnection) -> int:
        shards = [r["shard"] for r in conn.execute(_CLAIM_SHARDS, {"max_shards": self.max_shards})]
        if not shards:
            return 0
        rows = conn.execute(_PENDING_ROWS, {"shards": shards, "limit": self.batch_size}).fetchall()
        published = 0
        for start in range(0, len(rows), self.publish_chunk):
            chunk = rows[start : start + self.publish_chunk]
            # Flushed before the next chunk is produced, so a key's rows keep their order
            # across chunks, and the mark below covers only acknowledged records.
            self._publish(chunk)
            marker.execute(_MARK_PUBLISHED, {"ids": [r["id"] for r in chunk]})
            published += len(chunk)
            self.stats.published += len(chunk)
        return published

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
            if err is not None:
                errors.append(str(err))

        # Each row's publish is a span in its transaction's trace (the row's traceparent),
        # ended once Kafka acknowledged the chunk; the event carries the span on.
        spans: MessageSpans[int] = MessageSpans("relay publish", len(rows), "producer")
        for row in rows:
            event = _event_of(row)
            if spans.on and event.traceparent is not None:
                spans.add(row["id"], event.traceparent, _span_attributes(row))
                traced = spans.traceparents().get(row["id"])
                event = dataclasses.replace(event, traceparent=traced)
            record = self.encode(event)
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
            failure = PublishError(f"chunk of {len(rows)} not acknowledged: {detail}")
            spans.fail(failure)
            raise failure
        spans.end()

    def run(self, stop: threading.Event, idle_poll_s: float = 1.0, linger_s: float = 0.0) -> None:
        """Publish until `stop` is set; sleeps on LISTEN/NOTIFY when there is nothing to do.

        While the database is unreachable (at startup or later) it waits and reconnects;
        `stop` ends the wait at once.
        """
        while not stop.is_set():
            try:
                self._serve(stop, idle_poll_s, linger_s)
            except TRANSIENT_DB_ERRORS as exc:
                stop.wait(self.db_outage.failed(exc))

    def _serve(self, stop: threading.Event, idle_poll_s: float, linger_s: float) -> None:
        """Publish on one set of connections until `stop`, or until the database fails."""
        with self._connections() as (conn, marker, listener):
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            backoff = 0.5
            while not stop.is_set():
                try:
                    published = self.publish_batch(conn, marker)
                    backoff = 0.5
                except PublishError as exc:
                    self.db_outage.over()  # the database did its part of the batch
                    log.error("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    # A producer that failed a batch may be fenced or fatally broken after
                    # an outage; the batch is retried on a fresh one (same event ids).
                    self._producer = None
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                self.db_outage.over()
                if published < self.batch_size:
                    _wait_for_notify(listener, stop, idle_poll_s)
                    if linger_s:  # let the commits of the next moments join this batch
                        stop.wait(linger_s)

    @contextlib.contextmanager
    def _connections(self) -> Iterator[tuple[WorkConnection, MarkConnection, MarkConnection]]:
        """The claim, mark and LISTEN connections, closed together (without the rollback
        a context-managed connection attempts, which only logs noise on a dead one)."""
        opened: list[psycopg.Connection[Any]] = []
        try:
            conn = psycopg.connect(
                self.conninfo, row_factory=dict_row, connect_timeout=self.connect_timeout_s
            )
            opened.append(conn)
            marker = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=self.connect_timeout_s
            )
            opened.append(marker)
            listener = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=self.connect_timeout_s
            )
            opened.append(listener)
            # The relay's commits need not wait for the WAL flush: a mark lost with a
            # PostgreSQL crash only republishes its chunk (at-least-once, same ce_id), and
            # the claim commits nothing but row locks. Waiting cost an fsync per chunk.
            for c in (conn, marker):
                c.execute("SET synchronous_commit = off")
            conn.commit()
            yield conn, marker, listener
        finally:
            for c in opened:
                c.close()


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """End the claim after a failure; a connection the database dropped has nothing to end."""
    if conn.closed or conn.broken:
        return
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


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


def _span_attributes(row: dict[str, Any]) -> dict[str, object]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": row["topic"],
        "paystream.tenant_id": row["tenant_id"],
        "paystream.event_type": row["event_type"],
        "paystream.event_id": row["event_id"],
        "paystream.outbox_id": row["id"],
    }


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
