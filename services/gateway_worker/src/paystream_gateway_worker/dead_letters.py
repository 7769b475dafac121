"""The dead-letter topic: the original record, untouched, plus why and where it came from."""

from __future__ import annotations

from datetime import UTC, datetime

from paystream_gateway_worker.deps import RawRecord
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.cloudevents_codec import KafkaRecord


class KafkaDeadLetters:
    def __init__(self, publisher: AsyncPublisher, topic: str, *, deadline_s: float = 60) -> None:
        self._publisher = publisher
        self._topic = topic
        self._deadline_s = deadline_s

    async def send(self, record: RawRecord, reason: str) -> None:
        headers = [
            *record.headers,
            ("dlq_reason", reason.encode()[:4096]),
            ("dlq_topic", record.topic.encode()),
            ("dlq_partition", str(record.partition).encode()),
            ("dlq_offset", str(record.offset).encode()),
            ("dlq_at", datetime.now(UTC).isoformat().encode()),
            ("dlq_by", b"paystream-gateway-worker"),
        ]
        dead = KafkaRecord(key=record.key or b"", value=record.value or b"", headers=headers)
        await self._publisher.publish(self._topic, dead, deadline_s=self._deadline_s)
