"""The faust application: one agent over the commands topic feeding the command pipeline.

Records are acked by the pipeline when their command is finished; our transport commits
only offsets below the oldest unacked one, so a crash redelivers every command whose effect
may not be durable.
"""

from __future__ import annotations

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
    deps = Lazy(build_deps)

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
        # the shared view of every gateway's breaker (as this worker has it)
        extra=lambda d: {"breakers": d.breakers.view()},
    )
    return app
