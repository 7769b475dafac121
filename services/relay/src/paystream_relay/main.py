"""Entry point of the outbox relay process (`paystream worker relay`)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from confluent_kafka import Producer

from paystream_config import DatabaseSettings, KafkaSettings, RelaySettings, load
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_relay.relay import OutboxRelay
from paystream_telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)


def build_relay() -> tuple[OutboxRelay, RelaySettings]:
    kafka = load(KafkaSettings)
    db = load(DatabaseSettings)
    relay_settings = load(RelaySettings)
    registry = SchemaRegistry()
    relay = OutboxRelay(
        conninfo=db.libpq_url,
        new_producer=lambda: Producer(producer_config(kafka, client_id="paystream-relay")),
        topic_for=kafka.topic,
        encode=lambda event: encode(event, registry, validate=False),
        batch_size=relay_settings.relay_batch_size,
        max_shards=relay_settings.relay_max_shards_per_batch,
        publish_chunk=relay_settings.relay_publish_chunk,
    )
    return relay, relay_settings


def run() -> None:
    relay, settings = build_relay()
    setup_tracing("relay")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("relay: signal %d, finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("relay: started")
    relay.run(stop, idle_poll_s=settings.relay_idle_poll_s, linger_s=settings.relay_linger_s)
    relay.producer.flush(10)
    log.info("relay: stopped after publishing %d rows", relay.stats.published)
