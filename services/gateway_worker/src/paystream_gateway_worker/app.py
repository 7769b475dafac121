"""The faust application: one agent over the commands topic, `worker_concurrency` actors.

faust acks an event once its actor moves on, and commits only offsets below the oldest
unacked one, so a crash redelivers every command whose effect may not be durable.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from paystream_gateway_worker import faust_transport
from paystream_gateway_worker.deps import RawRecord, WorkerDeps
from paystream_gateway_worker.handler import handle
from paystream_gateway_worker.health import serve_health
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_messaging import topics

log = logging.getLogger(__name__)


def create_app(
    settings: GatewayWorkerSettings, build_deps: Callable[[], Awaitable[WorkerDeps]]
) -> faust.App:
    scheme = faust_transport.register(settings.kafka_fetch_wait_max_ms)
    brokers = ";".join(f"{scheme}://{host}" for host in settings.kafka_bootstrap.split(","))
    app = faust.App(
        settings.worker_group,
        broker=brokers,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_max_poll_interval=settings.kafka_max_poll_interval_ms / 1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # `paystream topics create` owns partitions and settings
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="paystream-faust-"),
    )
    topic = app.topic(
        settings.topic(topics.COMMANDS),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    holder: dict[str, WorkerDeps] = {}
    lock = asyncio.Lock()

    async def deps() -> WorkerDeps:
        async with lock:  # built once, inside faust's event loop
            if "deps" not in holder:
                holder["deps"] = await build_deps()
            return holder["deps"]

    @app.agent(topic, concurrency=settings.worker_concurrency)
    async def commands(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            record = RawRecord(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers=[(k, v) for k, v in (message.headers or []) if isinstance(v, bytes)],
            )
            await handle(await deps(), record)

    if settings.worker_web_port:

        @app.task  # type: ignore[untyped-decorator]
        async def health() -> None:
            await serve_health(app, await deps(), settings)

    return app
