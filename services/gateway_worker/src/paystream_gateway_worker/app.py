"""The faust application: one agent over the commands topic, `worker_concurrency` actors.

faust acks an event once its actor moves on; our transport commits only offsets below
the oldest unfinished one, so a crash redelivers every command whose effect may not be
durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.handler import handle
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_messaging import topics
from paystream_streams.app import Lazy, faust_app, raw_topic
from paystream_streams.health import add_health_server
from paystream_streams.records import RawRecord


def create_app(
    settings: GatewayWorkerSettings, build_deps: Callable[[], Awaitable[WorkerDeps]]
) -> faust.App:
    app = faust_app(settings, settings.worker_group)
    deps = Lazy(build_deps)

    @app.agent(
        raw_topic(app, settings.topic(topics.COMMANDS)), concurrency=settings.worker_concurrency
    )
    async def commands(stream: Any) -> None:
        async for event in stream.events():
            await handle(await deps.get(), RawRecord.of(event.message))

    add_health_server(
        app,
        deps,
        host=settings.worker_web_host,
        port=settings.worker_web_port,
        stall_after_s=settings.worker_stall_after_s,
        extra=lambda d: {"breakers": d.breakers.states()},
    )
    return app
