"""/healthz and /metrics for worker processes: a consumer that stalls is reported."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import faust
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from paystream_streams.app import Lazy

Report = Callable[[], tuple[int, dict[str, Any]]]


def stall_report(
    *, in_flight: float, last_progress: float, stall_after_s: float, assigned: int
) -> tuple[int, dict[str, Any]]:
    """Unhealthy when work is in flight but nothing finished for `stall_after_s`."""
    idle = time.monotonic() - last_progress
    stalled = in_flight > 0 and idle > stall_after_s
    body = {
        "status": "stalled" if stalled else "ok",
        "in_flight": in_flight,
        "seconds_since_progress": round(idle, 1),
        "assigned_partitions": assigned,
    }
    return (503 if stalled else 200), body


async def serve_health(host: str, port: int, report: Report, registry: CollectorRegistry) -> None:
    async def on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            path = parts[1].decode() if len(parts) > 1 else "/"
            if path == "/metrics":
                status, body, ctype = 200, generate_latest(registry), "text/plain"
            else:
                status, payload = report()
                body, ctype = json.dumps(payload).encode(), "application/json"
            head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
            writer.write(f"{head}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_request, host, port)
    async with server:
        await server.serve_forever()


class ProgressMetrics(Protocol):
    """What a worker's metrics object offers the health server."""

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def last_progress(self) -> float: ...

    @property
    def in_flight(self) -> Gauge: ...


class HasProgress(Protocol):
    @property
    def metrics(self) -> ProgressMetrics: ...


D = TypeVar("D", bound=HasProgress)


def add_health_server(
    app: faust.App,
    deps: Lazy[D],
    *,
    host: str,
    port: int,
    stall_after_s: float,
    extra: Callable[[D], dict[str, Any]] | None = None,
) -> None:
    """Serve /healthz (503 when in-flight work makes no progress) and /metrics from a faust
    worker; port 0 serves nothing."""
    if not port:
        return

    @app.task  # type: ignore[untyped-decorator]
    async def health() -> None:
        d = await deps.get()

        def report() -> tuple[int, dict[str, Any]]:
            status, body = stall_report(
                in_flight=d.metrics.in_flight._value.get(),
                last_progress=d.metrics.last_progress,
                stall_after_s=stall_after_s,
                assigned=len(app.consumer.assignment()) if app.consumer else 0,
            )
            return status, {**body, **(extra(d) if extra else {})}

        await serve_health(host, port, report, d.metrics.registry)
