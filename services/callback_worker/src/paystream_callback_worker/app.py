"""The callback worker's faust application: one agent over the callbacks topic, and a timer
that retries parked (orphan) callbacks.

Its own process and consumer group, apart from the gateway worker: callbacks must keep
flowing while provider calls are slow, and the two scale on different lags.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from paystream_callback_worker.deps import CallbackDeps
from paystream_callback_worker.handler import handle, retry_parked
from paystream_callback_worker.health import serve_health
from paystream_callback_worker.settings import CallbackWorkerSettings
from paystream_gateway_worker import faust_transport
from paystream_gateway_worker.deps import RawRecord
from paystream_messaging import topics

log = logging.getLogger(__name__)


def create_app(
    settings: CallbackWorkerSettings, build_deps: Callable[[], Awaitable[CallbackDeps]]
) -> faust.App:
    scheme = faust_transport.register(settings.kafka_fetch_wait_max_ms)
    brokers = ";".join(f"{scheme}://{host}" for host in settings.kafka_bootstrap.split(","))
    app = faust.App(
        settings.callback_worker_group,
        broker=brokers,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_max_poll_interval=settings.kafka_max_poll_interval_ms / 1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="paystream-faust-callbacks-"),
    )
    topic = app.topic(
        settings.topic(topics.CALLBACKS),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    holder: dict[str, CallbackDeps] = {}
    lock = asyncio.Lock()

    async def deps() -> CallbackDeps:
        async with lock:
            if "deps" not in holder:
                holder["deps"] = await build_deps()
            return holder["deps"]

    @app.agent(topic, concurrency=settings.callback_worker_concurrency)
    async def callbacks(stream: Any) -> None:
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

    @app.timer(interval=settings.callback_parked_sweep_s)  # type: ignore[untyped-decorator]
    async def parked() -> None:
        try:
            counts = await retry_parked(
                await deps(),
                base_s=settings.callback_parked_retry_base_s,
                max_s=settings.callback_parked_retry_max_s,
            )
        except Exception:  # the next sweep tries again; a crash here must not stop the app
            log.exception("parked callback sweep failed")
            return
        if counts:
            log.info("parked callback sweep: %s", counts)

    if settings.callback_worker_web_port:

        @app.task  # type: ignore[untyped-decorator]
        async def health() -> None:
            d = await deps()

            def report() -> tuple[int, dict[str, Any]]:
                idle = time.monotonic() - d.metrics.last_progress
                in_flight = d.metrics.in_flight._value.get()
                assigned = len(app.consumer.assignment()) if app.consumer is not None else 0
                stalled = in_flight > 0 and idle > settings.callback_worker_stall_after_s
                body = {
                    "status": "stalled" if stalled else "ok",
                    "in_flight": in_flight,
                    "seconds_since_progress": round(idle, 1),
                    "assigned_partitions": assigned,
                }
                return (503 if stalled else 200), body

            await serve_health(settings.callback_worker_web_port, report, d.metrics.registry)

    return app
