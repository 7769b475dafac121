"""The topics paystream uses, created idempotently."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from paystream_config import KafkaSettings
from paystream_messaging.kafka_config import admin_config

log = logging.getLogger(__name__)

COMMANDS = "commands"
CALLBACKS = "callbacks"
OUTCOMES = "outcomes"
DEAD_LETTERS = "dead-letters"
# Shared circuit-breaker state, keyed by gateway code (`paystream_messaging.gateway_health`):
# one partition, so every worker applies every record in the same order, and compacted, so
# a worker starting reads the last record of each gateway, not the whole history.
GATEWAY_HEALTH = "gateway-health"
ALL = (COMMANDS, CALLBACKS, OUTCOMES, DEAD_LETTERS, GATEWAY_HEALTH)
# Topics whose layout is part of their meaning: partitions and configs regardless of the
# PAYSTREAM_TOPIC_PARTITIONS the others follow.
_FIXED: dict[str, tuple[int, dict[str, str]]] = {
    GATEWAY_HEALTH: (1, {"cleanup.policy": "compact"}),
}


class TopicSetupError(RuntimeError):
    pass


def ensure_topics(settings: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create every missing topic; existing ones are left alone. Returns the created names."""
    admin = AdminClient(admin_config(settings))
    wanted = [
        NewTopic(
            settings.topic(name),
            num_partitions=_FIXED[name][0] if name in _FIXED else settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            config=_FIXED[name][1] if name in _FIXED else {},
        )
        for name in ALL
    ]
    created: list[str] = []
    futures = admin.create_topics(wanted, request_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(topic)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupError(f"cannot create topic {topic}: {err.str()}") from exc
    if created:
        log.info("created topics %s", created)
    return created
