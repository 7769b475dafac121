"""A faust app configured the way every paystream worker needs it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import faust
import uvloop

from paystream_config import KafkaSettings
from paystream_streams import faust_transport

T = TypeVar("T")


def faust_app(
    settings: KafkaSettings, group: str, *, busy_fetch_wait_ms: int | None = None
) -> faust.App:
    """The app of one worker process (`busy_fetch_wait_ms` overrides the fetch wait while
    records flow, for a consumer whose records can wait longer)."""
    scheme = faust_transport.register(
        faust_transport.FetchWait(
            busy_ms=busy_fetch_wait_ms or settings.kafka_fetch_wait_max_ms,
            idle_ms=settings.kafka_fetch_wait_idle_ms,
            idle_after_s=settings.kafka_fetch_idle_after_s,
        )
    )
    brokers = ";".join(f"{scheme}://{host}" for host in settings.kafka_bootstrap.split(","))
    return faust.App(
        group,
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
        datadir=tempfile.mkdtemp(prefix=f"paystream-faust-{group}-"),
        Worker=QuietWorker,
    )


class QuietWorker(faust.Worker):
    """faust's worker without its terminal spinner. To make the spinner spin on every log
    record, faust sets the *root logger* to DEBUG whenever the level is WARN or above, so
    every `log.debug` in aiokafka, httpcore and the stripe SDK builds a record (5-7% of a
    worker's CPU in profiles) only for the handler to drop it."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None

    def _setup_logging(self) -> None:
        """Keep the log handler the process set up (paystream's text or JSON lines: one
        format for every process) instead of mode's colored one; only mode's level (the
        `--loglevel` of `run`) applies, unless PAYSTREAM_LOG_LEVEL asks for another."""
        if not logging.root.handlers:  # not started through paystream's entry points
            super()._setup_logging()
            return
        asked = os.environ.get("PAYSTREAM_LOG_LEVEL")
        logging.root.setLevel(asked.upper() if asked else _level(self.loglevel))
        self.on_setup_root_logger(logging.root, logging.root.level)


def _level(level: int | str | None) -> int:
    if isinstance(level, int):
        return level
    return logging.getLevelNamesMapping().get(str(level).upper(), logging.WARNING)


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """Bytes in, bytes out: the CloudEvents codec decodes, so a bad record is ours to
    dead-letter instead of faust's to drop."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


class Lazy(Generic[T]):
    """Built once, on first use, inside faust's event loop (engines bind to their loop)."""

    def __init__(self, build: Callable[[], Awaitable[T]]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        async with self._lock:
            if self._value is None:
                self._value = await self._build()
            return self._value


def run(app: faust.App) -> None:
    """Run `app` as this process's worker (faust's own runner, quiet, no web server: the
    health server is ours)."""
    # uvloop: the event loop's own overhead was a tenth of a busy worker's CPU.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # JSON logs are one object per line: no startup banner on the same stream then.
    json_logs = os.environ.get("PAYSTREAM_LOG_FORMAT", "").strip().lower() == "json"
    quiet = ["--quiet"] if json_logs else []
    sys.argv = [sys.argv[0], *quiet, "worker", "--loglevel", "warn", "--without-web"]
    app.main()
