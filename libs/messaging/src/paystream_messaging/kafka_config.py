"""librdkafka settings that are safe for money.

librdkafka's defaults are not: idempotence is off, offsets are stored before the record is
processed, and a new group starts at the latest offset (skipping what came before it).
"""

from __future__ import annotations

from typing import Any

from paystream_config import KafkaSettings


def producer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,  # retries cannot duplicate or reorder within a partition
        "max.in.flight.requests.per.connection": 5,
        "delivery.timeout.ms": settings.kafka_delivery_timeout_ms,
        "linger.ms": 5,
    }


def consumer_config(settings: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": "earliest",  # a new group must not skip existing commands
        "enable.auto.commit": False,  # commit only after the effect is durable
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        "fetch.wait.max.ms": settings.kafka_fetch_wait_max_ms,
        # The default (1000 ms) pauses fetching once the local queue drains and halves
        # throughput when records take time to process.
        "fetch.queue.backoff.ms": 0,
    }


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap}
