"""The faust application: one agent over the commands topic feeding the command pipeline.

Records are acked by the pipeline when their command is finished; our transport commits
only offsets below the oldest unacked one, so a crash redelivers every command whose effect
may not be durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.pipeline import take_in
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_messaging import topics
from paystream_streams.app import Lazy, faust_app, raw_topic
from paystream_streams.batching import consume_in_batches
from paystream_streams.health import add_health_server


def create_app(
    settings: GatewayWorkerSettings, build_deps: Callable[[], Awaitable[WorkerDeps]]
) -> faust.App:
    app = faust_app(
        settings, settings.worker_group, busy_fetch_wait_ms=settings.worker_fetch_wait_ms
    )
    built: list[WorkerDeps] = []  # what shutdown has to close (nothing if never built)

    async def build_and_keep() -> WorkerDeps:
        d = await build_deps()
        built.append(d)
        return d

    deps = Lazy(build_and_keep)

    # One actor: records reach the pipeline in offset order, which keeps one account's
    # commands in order; the pipeline itself runs many commands at once.
    @app.agent(raw_topic(app, settings.topic(topics.COMMANDS)), concurrency=1)
    async def commands(stream: Any) -> None:
        d = await deps.get()
        await consume_in_batches(
            stream,
            d.metrics,
            lambda batches: take_in(d, batches),
            batch_max=settings.worker_batch_max,
            linger_s=settings.worker_batch_linger_s,
            max_in_flight=settings.worker_concurrency,
        )

    add_health_server(
        app,
        deps,
        host=settings.worker_web_host,
        port=settings.worker_web_port,
        stall_after_s=settings.worker_stall_after_s,
        # the shared view of every gateway's breaker (as this worker has it), and whether
        # that view is caught up and still hears the topic
        extra=lambda d: {
            "breakers": d.breakers.view(),
            **({"breaker_view": d.health.status()} if d.health is not None else {}),
        },
    )

    @app.on_before_shutdown.connect
    async def close_deps(_app: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        """Stop the background work the deps started (after the consumer stopped)."""
        for d in built:
            await d.routing.close()
            if d.health is not None:
                await asyncio.to_thread(d.health.close)

    return app
