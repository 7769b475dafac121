"""The callback worker's faust application: one agent over the callbacks topic, and a timer
that retries parked (orphan) callbacks.

Its own process and consumer group, apart from the gateway worker: callbacks must keep
flowing while provider calls are slow, and the two scale on different lags.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from paystream_messaging import topics
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.handler import retry_parked, take_in
from paystream_provider_reports.settings import CallbackWorkerSettings
from paystream_streams.app import Lazy, faust_app, raw_topic
from paystream_streams.batching import consume_in_batches
from paystream_streams.health import add_health_server

log = logging.getLogger(__name__)


def create_app(
    settings: CallbackWorkerSettings, build_deps: Callable[[], Awaitable[CallbackDeps]]
) -> faust.App:
    app = faust_app(
        settings,
        settings.callback_worker_group,
        busy_fetch_wait_ms=settings.callback_worker_fetch_wait_ms,
    )
    topic = raw_topic(app, settings.topic(topics.CALLBACKS))
    lazy = Lazy(build_deps)

    async def deps() -> CallbackDeps:
        return await lazy.get()

    # One actor: batches in offset order (the rules do not need it, forward-only moves
    # and the row lock make any order safe, but it keeps the logs readable).
    @app.agent(topic, concurrency=1)
    async def callbacks(stream: Any) -> None:
        d = await deps()
        await consume_in_batches(
            stream,
            d.metrics,
            lambda batches: take_in(d, batches),
            batch_max=settings.callback_worker_batch_max,
            linger_s=settings.callback_worker_batch_linger_s,
            max_in_flight=settings.callback_worker_concurrency,
        )

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

    add_health_server(
        app,
        lazy,
        host=settings.callback_worker_web_host,
        port=settings.callback_worker_web_port,
        stall_after_s=settings.callback_worker_stall_after_s,
    )
    return app
