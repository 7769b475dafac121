"""Entry point of the callback ingress (`paystream serve callback-ingress`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from paystream_callback_ingress.app import create_app
from paystream_callback_ingress.deps import IngressDeps
from paystream_callback_ingress.settings import CallbackIngressSettings
from paystream_config import load
from paystream_gateways.manager import CachedConnectionSource, DbConnectionSource, GatewayManager
from paystream_gateways.protocol import ClientOptions
from paystream_keyring import KeyRing, KeyRingSettings
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.callback_log import CallbackLogWriter
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.pool import HotPool
from paystream_telemetry.process import setup_process
from paystream_web.serving import serve

log = logging.getLogger(__name__)


def build_deps(settings: CallbackIngressSettings, ring: KeyRing) -> IngressDeps:
    config = producer_config(settings, "paystream-callback-ingress")
    # librdkafka reports every record by then: a 503'd callback is never delivered later.
    config["delivery.timeout.ms"] = settings.callback_publish_timeout_ms
    sessions = sessionmaker(create_engine(settings))
    pool = HotPool(settings)
    # Connection rows are read once and kept until the configuration version moves
    # (polled by the app's background task), so a callback costs no lookup.
    cache = ConfigCache()
    source = CachedConnectionSource(DbConnectionSource(sessions), cache)
    options = ClientOptions(callback_tolerance_s=settings.callback_tolerance_s)
    return IngressDeps(
        settings=settings,
        publisher=AsyncPublisher(config),
        sessions=sessions,
        registry=SchemaRegistry(),
        gateways=GatewayManager(source, ring, options=options),
        connections=source,
        callback_log=CallbackLogWriter(pool),
        pool=pool,
        config=cache,
    )


def app_factory() -> FastAPI:
    setup_process("callback-ingress")  # in the serving process (see the ingest API's)
    settings = load(CallbackIngressSettings)
    ring = KeyRing.from_settings(load(KeyRingSettings))
    return create_app(build_deps(settings, ring))


def run() -> None:
    settings = load(CallbackIngressSettings)
    load(KeyRingSettings)  # fail here, with the settings message
    serve(
        "paystream_callback_ingress.main:app_factory",
        name="callback-ingress",
        host=settings.callback_host,
        port=settings.callback_port,
        log=log,
    )
