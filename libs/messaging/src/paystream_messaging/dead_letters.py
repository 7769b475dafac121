"""The dead-letter record format, in one place for who writes it and who reads it back.

A dead letter is the original record untouched (key, value, headers) plus `dlq_*` headers
saying why and where from. The workers write them (`paystream_streams.records`); the
operator's `paystream dead-letters` reads them and may redrive one: its original record
goes back to its original topic with `dlq_redrives` = the dead letter's count. If it
fails again, its new dead letter counts one more, so a poison record redriven comes back
with a higher count and nothing ever redrives by itself: no loop.

A dead letter's id is its own position on the dead-letter topic, `<partition>:<offset>`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from paystream_messaging.cloudevents_codec import KafkaRecord

REASON: Final = "dlq_reason"
TOPIC: Final = "dlq_topic"
PARTITION: Final = "dlq_partition"
OFFSET: Final = "dlq_offset"
AT: Final = "dlq_at"
BY: Final = "dlq_by"
# How many times this record has been dead-lettered (1 the first time).
COUNT: Final = "dlq_count"
# On a redriven record: the count of the dead letter it was redriven from.
REDRIVES: Final = "dlq_redrives"
# Every header the dead-letter machinery adds; a redrive strips them from the original.
OURS: Final = frozenset({REASON, TOPIC, PARTITION, OFFSET, AT, BY, COUNT, REDRIVES})
MAX_REASON_BYTES: Final = 4096
_ID = re.compile(r"^(\d{1,9}):(\d{1,19})$")


class NotADeadLetter(ValueError):
    """A record on the dead-letter topic that does not say where it came from."""


def dead_letter_headers(
    headers: Sequence[tuple[str, bytes]],
    *,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    by: bytes,
    at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of the dead letter of a record that had `headers`: all of them, then ours.

    Its count carries over from a redriven record (`dlq_redrives` + 1)."""
    return [
        *headers,
        (REASON, reason.encode()[:MAX_REASON_BYTES]),
        (TOPIC, topic.encode()),
        (PARTITION, str(partition).encode()),
        (OFFSET, str(offset).encode()),
        (AT, (at or datetime.now(UTC)).isoformat().encode()),
        (BY, by),
        (COUNT, str(redrives(headers) + 1).encode()),
    ]


def redrives(headers: Sequence[tuple[str, bytes]]) -> int:
    """How many times a record was redriven already (0 if it never was)."""
    return _int(_last(headers, REDRIVES)) or 0


def parse_id(text: str) -> tuple[int, int]:
    """`<partition>:<offset>` -> (partition, offset); ValueError otherwise."""
    match = _ID.match(text.strip())
    if match is None:
        raise ValueError(f"not a dead-letter id (PARTITION:OFFSET): {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, read back."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime | None  # Kafka's, when the dead letter was appended
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return _text(_last(self.headers, REASON)) or "-"

    @property
    def reason_code(self) -> str:
        """The reason's first word (`unknown_tenant`, `invalid_event`, ...)."""
        return self.reason.split(":", 1)[0]

    @property
    def original_topic(self) -> str | None:
        return _text(_last(self.headers, TOPIC))

    @property
    def original_partition(self) -> int | None:
        return _int(_last(self.headers, PARTITION))

    @property
    def original_offset(self) -> int | None:
        return _int(_last(self.headers, OFFSET))

    @property
    def dead_lettered_at(self) -> datetime | None:
        """When the worker gave up on it (`dlq_at`), else when Kafka appended it."""
        stamped = _text(_last(self.headers, AT))
        if stamped:
            try:
                at = datetime.fromisoformat(stamped)
            except ValueError:
                return self.timestamp
            return at if at.tzinfo else at.replace(tzinfo=UTC)
        return self.timestamp

    @property
    def by(self) -> str | None:
        return _text(_last(self.headers, BY))

    @property
    def count(self) -> int:
        """How many times its record was dead-lettered; older dead letters have no header."""
        return _int(_last(self.headers, COUNT)) or 1

    @property
    def event_type(self) -> str | None:
        """The CloudEvents type: the `ce_type` header, or a structured event's `type`."""
        header = _text(_last(self.headers, "ce_type"))
        if header:
            return header
        content_type = (_text(_last(self.headers, "content-type")) or "").lower()
        if content_type.startswith("application/cloudevents+json") and self.value:
            try:
                kind = json.loads(self.value).get("type")
            except (ValueError, AttributeError):
                return None
            return kind if isinstance(kind, str) else None
        return None

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The original record's headers, in order, without ours."""
        return [(k, v) for k, v in self.headers if k not in OURS]

    def digest(self) -> str:
        """sha256 of the original record (key, value, headers): the same failed record
        dead-lettered twice has one digest; another record at a reused position (an
        in-memory broker restarted) has another."""
        h = hashlib.sha256()
        parts = [
            (self.original_topic or "").encode(),
            self.key or b"",
            self.value or b"",
            *(f"{k}={v.hex()}".encode() for k, v in self.original_headers()),
        ]
        for data in parts:
            h.update(len(data).to_bytes(8, "big"))  # so no two splits hash alike
            h.update(data)
        return h.hexdigest()

    def redrive_record(self) -> KafkaRecord:
        """The original record as it was, plus `dlq_redrives` = this dead letter's count.

        NotADeadLetter when it does not say where it came from."""
        if not self.original_topic:
            raise NotADeadLetter(f"dead letter {self.id} has no {TOPIC} header")
        return KafkaRecord(
            key=self.key or b"",
            value=self.value or b"",
            headers=[*self.original_headers(), (REDRIVES, str(self.count).encode())],
        )

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        kind, millis = message.timestamp()
        raw: Any = message.headers() or []
        return cls(
            topic=str(message.topic()),
            partition=int(message.partition() or 0),
            offset=int(message.offset() or 0),
            timestamp=datetime.fromtimestamp(millis / 1000, UTC) if kind and millis > 0 else None,
            key=message.key(),
            value=message.value(),
            headers=[(str(k), v) for k, v in raw if isinstance(v, bytes)],
        )


def reader_config(bootstrap: str, client_id: str, fetch_wait_max_ms: int = 10) -> dict[str, Any]:
    """A consumer that reads by assignment only: no group joined, no offset committed.

    tansu answers a fetch only when fetch.wait.max.ms expires, so it is kept short."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        # librdkafka wants one even for assign(); nothing is ever committed under it.
        "group.id": f"{client_id}-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": fetch_wait_max_ms,
        "fetch.queue.backoff.ms": 0,
    }


class ReadFailed(RuntimeError):
    """The dead-letter topic could not be read (missing, broker away, deadline)."""


def read_all(
    config: dict[str, Any],
    topic: str,
    *,
    timeout_s: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> Iterator[DeadLetter]:
    """Every record of `topic`, partition by partition in offset order, read until each
    partition reports its end (records appended meanwhile may or may not be included).

    The end is the fetch's own end-of-partition, not a ListOffsets watermark: tansu
    answers ListOffsets with the last batch's base offset + 1, short of the records a
    batched producer put after it. `progress(read)` is called every 1,000 records."""
    consumer = Consumer(config)
    try:
        partitions = _partitions(consumer, topic, timeout_s)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending: dict[int, list[DeadLetter]] = {p: [] for p in partitions}
        done: set[int] = set()
        read = 0
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions):
            if time.monotonic() > deadline:
                raise ReadFailed(f"{topic}: not read to its end within {timeout_s:g}s")
            for message in consumer.consume(num_messages=500, timeout=0.2):
                err = message.error()
                partition = int(message.partition() or 0)
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(partition)
                        continue
                    raise ReadFailed(f"{topic}: {err.str()}")
                if partition in done:  # appended after its end was reached: next time
                    continue
                pending[partition].append(DeadLetter.of(message))
                read += 1
                deadline = time.monotonic() + timeout_s  # a deadline on silence
                if progress is not None and read % 1000 == 0:
                    progress(read)
        for partition in sorted(pending):
            yield from pending[partition]
    finally:
        consumer.close()


def read_one(
    config: dict[str, Any], topic: str, partition: int, offset: int, *, timeout_s: float = 30.0
) -> DeadLetter | None:
    """The record at `partition:offset`, or None when there is none."""
    consumer = Consumer({**config, "auto.offset.reset": "latest"})
    try:
        if partition not in _partitions(consumer, topic, timeout_s):
            return None
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                # Past the end tansu answers empty fetches rather than out-of-range; the
                # fetches' own high watermark (cached) says it is not there.
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high >= 0 and offset >= high:
                    return None
                continue
            err = message.error()
            if err is not None:
                # Past the end, or before the start (reset to the end): not there.
                if err.code() == KafkaError._PARTITION_EOF:
                    return None
                raise ReadFailed(f"{topic}: {err.str()}")
            found = int(message.offset() or 0)
            return DeadLetter.of(message) if found == offset else None
        raise ReadFailed(f"{topic}: {partition}:{offset} not read within {timeout_s:g}s")
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise ReadFailed(f"{topic}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        why = described.error.str() if described and described.error else "unknown topic"
        raise ReadFailed(f"{topic}: {why}")
    return sorted(described.partitions)


def _last(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """The last header called `name`: ours come after the original's."""
    for key, value in reversed(headers):
        if key == name:
            return value
    return None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _int(raw: bytes | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None
