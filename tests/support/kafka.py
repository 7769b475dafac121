"""Reading topics back in tests, through a real consumer on a fresh group."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Received]], bool],
    *,
    timeout: float = 60.0,
) -> list[Received]:
    """Everything on `topic` from the start, read until `done(records)` or the deadline."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 0,
        }
    )
    records: list[Received] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s reading {topic}: {len(records)} records"
                )
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error: {err}")
                raw_headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
                headers = {k: v for k, v in raw_headers if isinstance(v, bytes)}
                records.append(
                    Received(
                        topic=str(msg.topic()),
                        partition=int(msg.partition() or 0),
                        offset=int(msg.offset() or 0),
                        key=msg.key(),
                        value=msg.value(),
                        headers=headers,
                    )
                )
    finally:
        consumer.close()
    return records


def end_offsets(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Total records on a topic, counted by reading every partition to its end: proves
    absence, not just delay. Not the ListOffsets watermark: after a batched produce tansu
    answers it with the last batch's base offset + 1, short of the records after it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(ends) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: partitions {sorted(ends)} of {partitions} read")
            for message in consumer.consume(num_messages=500, timeout=0.2):
                err = message.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends[int(message.partition() or 0)] = int(message.offset() or 0)
                elif err is None:
                    ends.pop(int(message.partition() or 0), None)  # more came: not the end
        return sum(ends.values())
    finally:
        consumer.close()
