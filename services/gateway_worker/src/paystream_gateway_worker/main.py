"""Entry point of the gateway worker (`paystream worker gateway`)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

from paystream_config import load
from paystream_gateway_worker.app import create_app
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.metrics import WorkerMetrics
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.manager import CachedConnectionSource, DbConnectionSource, GatewayManager
from paystream_gateways.protocol import ClientOptions
from paystream_gateways.shared_breakers import SharedBreakers
from paystream_keyring import KeyRing, KeyRingSettings
from paystream_messaging import topics
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.gateway_health_topic import HealthTopic, TopicLayoutError
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from paystream_streams import app as streams
from paystream_streams.records import KafkaDeadLetters
from paystream_telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)


def build_deps_factory(
    settings: GatewayWorkerSettings, ring: KeyRing
) -> Callable[[], Awaitable[WorkerDeps]]:
    async def build() -> WorkerDeps:
        engine = create_engine(settings)
        registry = SchemaRegistry()
        config = ConfigCache()
        publisher = AsyncPublisher(producer_config(settings, "paystream-gateway-worker"))
        metrics = WorkerMetrics()
        health, breakers = await shared_breakers(settings, publisher, metrics)
        return WorkerDeps(
            settings=settings,
            store=PgPaymentStore(HotPool(settings), registry, config),
            registry=registry,
            gateways=GatewayManager(
                CachedConnectionSource(DbConnectionSource(sessionmaker(engine)), config),
                ring,
                options=client_options(settings, metrics),
            ),
            keyring=ring,
            dead_letters=KafkaDeadLetters(
                publisher, settings.topic(topics.DEAD_LETTERS), by="paystream-gateway-worker"
            ),
            breakers=breakers,
            metrics=metrics,
            health=health,
        )

    return build


def client_options(settings: GatewayWorkerSettings, metrics: WorkerMetrics) -> ClientOptions:
    """How the worker's provider clients connect, and where their resends are counted."""
    return ClientOptions(
        connect_timeout_s=settings.gateway_connect_timeout_s,
        read_timeout_s=settings.gateway_read_timeout_s,
        on_resend=metrics.resent,
    )


async def shared_breakers(
    settings: GatewayWorkerSettings, publisher: AsyncPublisher, metrics: WorkerMetrics
) -> tuple[HealthTopic, SharedBreakers]:
    """The breakers every worker shares, over a view of the gateway-health topic read to
    its end first: a worker (re)started while a breaker is open must not call that gateway.
    A topic that is missing or has more than one partition stops the worker here
    (TopicLayoutError)."""
    health = HealthTopic(
        settings,
        publisher,
        worker_id=worker_id(),
        fetch_wait_ms=settings.breaker_view_fetch_wait_ms,
        on_change=metrics.breaker_changed,
        on_publish_error=metrics.health_publish_errors.inc,
        on_reader_error=metrics.health_reader_errors.inc,
    )
    metrics.watch_health_view(health)
    try:
        await health.start(catch_up_s=settings.breaker_view_catch_up_s)
    except TopicLayoutError:
        log.critical("gateway worker cannot start", exc_info=True)
        raise
    return health, SharedBreakers(
        health.live,
        settings.breaker_fail_max,
        settings.breaker_reset_timeout_s,
        lease_s=settings.breaker_probe_lease_s,
        claim_wait_s=settings.breaker_claim_wait_s,
        on_probe=metrics.probe,
    )


def worker_id() -> str:
    """host:pid:random: who published a health record (a restarted process is another)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def run() -> None:
    settings = load(GatewayWorkerSettings)
    ring = KeyRing.from_settings(load(KeyRingSettings))
    setup_tracing("gateway-worker")
    streams.run(create_app(settings, build_deps_factory(settings, ring)))
