"""Wiring every paystream HTTP service shares: error handlers, bounded bodies, readiness of
the database, operations routes. Request metrics are the edge's (`paystream_web.edge`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from paystream_web.problems import Problem

log = logging.getLogger(__name__)


# How long a client should wait before retrying while the database is away: a restart
# or failover takes seconds, and a short hint keeps clients from giving up too early.
RETRY_AFTER_S = 2


def install_problem_handlers(
    app: FastAPI,
    problem: type[Problem],
    *,
    unavailable: tuple[type[BaseException], ...] = (),  # TRANSIENT_DB_ERRORS' type
    retry_after_s: int = RETRY_AFTER_S,
) -> None:
    """Every error leaves as problem+json: ours, routing's 404/405, crashes (500), and the
    `unavailable` errors (a database that is down: nothing was done, try again) as 503
    with Retry-After, so clients retry instead of treating the request as failed."""

    @app.exception_handler(problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return exc.response(instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code)
        if kind is None:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        # Starlette's 405 carries the Allow header (RFC 9110 §15.5.6 requires it).
        answer = problem(kind, str(exc.detail), headers=dict(exc.headers or {}))
        return answer.response(request.url.path)

    async def _unavailable(request: Request, exc: Exception) -> Response:
        # One line, no traceback: during an outage every request would log one.
        log.warning(
            "%s %s: database unavailable (%s); answered 503",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        down = problem(
            "service-unavailable",
            "the database is unavailable; nothing was done, retry after a moment",
            headers={"Retry-After": str(retry_after_s)},
        )
        return down.response(request.url.path)

    for error in unavailable:
        if issubclass(error, Exception):  # Starlette handles Exception subclasses only
            app.add_exception_handler(error, _unavailable)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        crash = problem("internal-error", "unexpected error; it has been logged")
        return crash.response(request.url.path)


async def read_limited_body(request: Request, limit: int, problem: type[Problem]) -> bytes:
    """The body, or `payload-too-large` as soon as it passes `limit` (chunked ones too)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise problem("payload-too-large", f"bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as they arrive
            raise problem("payload-too-large", f"bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def database_ready(sessions: async_sessionmaker[AsyncSession]) -> bool:
    try:
        async with sessions() as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), 2.0)
        return True
    except Exception:  # any failure means "not ready"; the reason is in the DB's logs
        return False


def add_operations_routes(
    app: FastAPI,
    *,
    kafka_ping: Callable[[float], bool],
    sessions: async_sessionmaker[AsyncSession],
    registry: CollectorRegistry,
) -> None:
    """/healthz (the process answers), /readyz (Kafka and PostgreSQL reachable), /metrics."""

    @app.get("/healthz", operation_id="healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", operation_id="readyz")
    async def readyz() -> Response:
        kafka_ok, db_ok = await asyncio.gather(
            asyncio.to_thread(kafka_ping, 2.0), database_ready(sessions)
        )
        ready = kafka_ok and db_ok
        body = {"status": "ready" if ready else "not ready", "kafka": kafka_ok, "database": db_ok}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", operation_id="metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
