"""A consumed record as the handlers see it, and where records that cannot be handled go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.cloudevents_codec import KafkaRecord
from paystream_messaging.dead_letters import dead_letter_headers


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def of(cls, message: Any) -> RawRecord:
        """From a faust message (header values that are not bytes are dropped)."""
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            headers=[(k, v) for k, v in (message.headers or []) if isinstance(v, bytes)],
        )


class DeadLetters(Protocol):
    async def send(self, record: RawRecord, reason: str) -> None:
        """Return only once the dead letter is durable (acknowledged by Kafka)."""
        ...


class KafkaDeadLetters:
    """The dead-letter topic: the original record untouched, plus why and where from
    (`paystream_messaging.dead_letters`): a redriven record's count carries over, +1."""

    def __init__(
        self, publisher: AsyncPublisher, topic: str, *, by: str, deadline_s: float = 60
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._by = by.encode()
        self._deadline_s = deadline_s

    async def send(self, record: RawRecord, reason: str) -> None:
        headers = dead_letter_headers(
            record.headers,
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            by=self._by,
        )
        dead = KafkaRecord(key=record.key or b"", value=record.value or b"", headers=headers)
        await self._publisher.publish(self._topic, dead, deadline_s=self._deadline_s)
