"""Entry points: `paystream worker callback` and `paystream worker reconciler`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from paystream_config import DatabaseSettings, load
from paystream_gateways import ClientOptions
from paystream_gateways.manager import CachedConnectionSource, DbConnectionSource, GatewayManager
from paystream_keyring import KeyRing, KeyRingSettings
from paystream_messaging import topics
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_provider_reports.app import create_app
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.metrics import CallbackMetrics
from paystream_provider_reports.reconciler import AuditExporter, BacklogExporter, Reconciler
from paystream_provider_reports.settings import CallbackWorkerSettings, ReconcilerSettings
from paystream_storage.audit import PgAuditCounts
from paystream_storage.backlog import PgBacklog
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from paystream_streams import app as streams
from paystream_streams.health import serve_health
from paystream_streams.records import DeadLetters, KafkaDeadLetters, RawRecord
from paystream_telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)


class _NoDeadLetters:
    """The reconciler consumes no topic, so it never dead-letters."""

    async def send(self, record: RawRecord, reason: str) -> None:
        raise AssertionError(f"the reconciler has no dead letters ({reason})")


def build_deps(db: DatabaseSettings, ring: KeyRing, dead_letters: DeadLetters) -> CallbackDeps:
    engine = create_engine(db)
    registry = SchemaRegistry()
    config = ConfigCache()
    source = CachedConnectionSource(DbConnectionSource(sessionmaker(engine)), config)
    metrics = CallbackMetrics()
    return CallbackDeps(
        store=PgPaymentStore(HotPool(db), registry, config),
        registry=registry,
        gateways=GatewayManager(source, ring, options=client_options(metrics)),
        connections=source,
        dead_letters=dead_letters,
        metrics=metrics,
    )


def client_options(metrics: CallbackMetrics) -> ClientOptions:
    """The provider clients of status lookups: default timeouts, resends counted."""
    return ClientOptions(on_resend=metrics.lookup_resent)


def build_deps_factory(
    settings: CallbackWorkerSettings, ring: KeyRing
) -> Callable[[], Awaitable[CallbackDeps]]:
    async def build() -> CallbackDeps:
        publisher = AsyncPublisher(producer_config(settings, "paystream-callback-worker"))
        dead = KafkaDeadLetters(
            publisher, settings.topic(topics.DEAD_LETTERS), by="paystream-callback-worker"
        )
        return build_deps(settings, ring, dead)

    return build


def run_callback_worker() -> None:
    settings = load(CallbackWorkerSettings)
    ring = KeyRing.from_settings(load(KeyRingSettings))
    setup_tracing("callback-worker")
    streams.run(create_app(settings, build_deps_factory(settings, ring)))


def run_reconciler() -> None:
    settings = load(ReconcilerSettings)
    ring = KeyRing.from_settings(load(KeyRingSettings))
    setup_tracing("reconciler")
    asyncio.run(_reconcile_forever(settings, ring))


async def _reconcile_forever(settings: ReconcilerSettings, ring: KeyRing) -> None:
    deps = build_deps(settings, ring, _NoDeadLetters())
    reconciler = Reconciler(deps, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    if settings.reconciler_web_port:

        def report() -> tuple[int, dict[str, Any]]:
            return 200, {"status": "ok", "unresolved": deps.metrics.unresolved._value.get()}

        tasks.append(
            asyncio.create_task(
                serve_health(
                    settings.reconciler_web_host,
                    settings.reconciler_web_port,
                    report,
                    deps.metrics.registry,
                )
            )
        )
    backlog = BacklogExporter(PgBacklog(settings), deps.metrics, settings)
    tasks.append(asyncio.create_task(backlog.run(stop)))
    if settings.reconciler_audit_interval_s > 0:
        exporter = AuditExporter(PgAuditCounts(settings), deps.metrics, settings)
        tasks.append(asyncio.create_task(exporter.run(stop)))
    log.info("reconciler: started")
    try:
        await reconciler.run(stop)
    finally:
        for task in tasks:
            task.cancel()
        await deps.gateways.aclose()
        log.info("reconciler: stopped")


if __name__ == "__main__":  # `python -m paystream_provider_reports.main callback|reconciler`
    logging.basicConfig(level=logging.INFO)
    {"callback": run_callback_worker, "reconciler": run_reconciler}[sys.argv[1]]()
