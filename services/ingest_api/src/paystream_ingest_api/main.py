"""Entry point of the ingest API process (`paystream serve ingest-api`)."""

from __future__ import annotations

import base64
import logging
import uuid

from fastapi import FastAPI

from paystream_config import load
from paystream_ingest_api.app import create_app
from paystream_ingest_api.deps import IngestDeps, SealedDestination, Sealer
from paystream_ingest_api.settings import IngestSettings
from paystream_keyring import KeyRing, KeyRingSettings
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.pool import HotPool
from paystream_telemetry.process import setup_process
from paystream_web.serving import serve

log = logging.getLogger(__name__)


def destination_sealer(ring: KeyRing) -> Sealer:
    """Bank details sealed under the tenant and transaction they belong to."""

    def seal(tenant: uuid.UUID, txn: uuid.UUID, cleartext: bytes) -> SealedDestination:
        sealed = ring.seal(tenant, txn, cleartext)
        return SealedDestination(base64.b64encode(sealed.ciphertext).decode(), sealed.key_id)

    return seal


def build_deps(settings: IngestSettings, ring: KeyRing) -> IngestDeps:
    config = producer_config(settings, "paystream-ingest-api")
    # librdkafka reports every record by then: a 503'd command is never delivered later.
    config["delivery.timeout.ms"] = settings.ingest_publish_timeout_ms
    return IngestDeps(
        settings=settings,
        publisher=AsyncPublisher(config),
        sessions=sessionmaker(create_engine(settings)),
        pool=HotPool(settings),
        registry=SchemaRegistry(),
        seal_destination=destination_sealer(ring),
    )


def app_factory() -> FastAPI:
    """The app with its dependencies from the environment (what the servers import)."""
    # Here, not in run(): with several server workers each process builds its own app, and
    # each needs its own log handler and span exporter.
    setup_process("ingest-api")
    settings = load(IngestSettings)
    ring = KeyRing.from_settings(load(KeyRingSettings))
    return create_app(build_deps(settings, ring))


def run() -> None:
    settings = load(IngestSettings)
    load(KeyRingSettings)  # fail here, with the settings message, not inside a worker
    serve(
        "paystream_ingest_api.main:app_factory",
        name="ingest-api",
        host=settings.ingest_host,
        port=settings.ingest_port,
        log=log,
        server=settings.ingest_server,
        workers=settings.ingest_workers,
    )
