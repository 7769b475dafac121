"""The health view's reader thread: an error does not freeze the view. The reader is
restarted from the record after the last one it handed over, and says so in its status
(for /healthz and the metrics)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException

from paystream_config import KafkaSettings
from paystream_messaging import gateway_health_topic
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.gateway_health import HealthRecord, encode
from paystream_messaging.gateway_health_topic import HealthTopic, _Batch

SETTINGS = KafkaSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="unit")


def failure(n: int) -> bytes:
    return encode(HealthRecord(gateway="jsonpay", event="failure", failures=n, by="w2", at=1.0))


class FlakyTopic:
    """Stands for the partition: the first reader fails after one record, the next ones
    read from where they are told."""

    def __init__(self) -> None:
        self.log: list[bytes | None] = [failure(1), failure(2), failure(3)]
        self.starts: list[int] = []

    def read(
        self, _settings: KafkaSettings, _topic: str, _wait: int, stop: threading.Event, *,
        start: int = OFFSET_BEGINNING,
    ) -> Generator[_Batch, None, None]:  # fmt: skip
        offset = 0 if start == OFFSET_BEGINNING else start
        self.starts.append(offset)
        if len(self.starts) == 1:
            yield _Batch(self.log[:1], False, 1)
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker went away"))
        yield _Batch(self.log[offset:], True, len(self.log))
        while not stop.wait(0.01):
            yield _Batch([], False, -1)


async def test_a_reader_error_restarts_it_after_the_last_record_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = FlakyTopic()
    monkeypatch.setattr(gateway_health_topic, "_read", topic.read)
    monkeypatch.setattr(gateway_health_topic, "check_layout", lambda *_args: None)
    errors: list[int] = []
    health = HealthTopic(
        SETTINGS,
        AsyncPublisher.__new__(AsyncPublisher),  # never used: nothing is published
        worker_id="w1",
        fetch_wait_ms=10,
        on_reader_error=lambda: errors.append(1),
        reader_backoff_s=0.01,
    )
    try:
        assert await health.start(catch_up_s=5)
    finally:
        await asyncio.to_thread(health.close)
    assert topic.starts == [0, 1], "read again from the record after the one handed over"
    assert health.live.applied == 3, "no record twice, none missed"
    entry = health.live.entry("jsonpay")
    assert entry is not None
    assert entry.failures == 3
    status: dict[str, Any] = health.status()
    assert (status["caught_up"], status["records"], status["reader_errors"]) == (True, 3, 1)
    assert "broker went away" in status["last_reader_error"]
    assert errors == [1]
