"""/healthz and /metrics for the worker: a consumer that stalls is reported, not hidden."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import generate_latest

from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.settings import GatewayWorkerSettings


def health_report(
    app: Any, deps: WorkerDeps, settings: GatewayWorkerSettings
) -> tuple[int, dict[str, Any]]:
    """Unhealthy when commands are in flight but nothing finished for `stall_after_s`, or
    when the consumer has no partitions assigned while its topic has some."""
    idle = time.monotonic() - deps.metrics.last_progress
    in_flight = deps.metrics.in_flight._value.get()
    assigned = len(app.consumer.assignment()) if app.consumer is not None else 0
    stalled = in_flight > 0 and idle > settings.worker_stall_after_s
    body = {
        "status": "stalled" if stalled else "ok",
        "in_flight": in_flight,
        "seconds_since_progress": round(idle, 1),
        "assigned_partitions": assigned,
        "breakers": deps.breakers.states(),
    }
    return (503 if stalled else 200), body


async def serve_health(app: Any, deps: WorkerDeps, settings: GatewayWorkerSettings) -> None:
    async def on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            if path == "/metrics":
                status, body, ctype = 200, generate_latest(deps.metrics.registry), "text/plain"
            else:
                status, report = health_report(app, deps, settings)
                body, ctype = json.dumps(report).encode(), "application/json"
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_request, "127.0.0.1", settings.worker_web_port)
    async with server:
        await server.serve_forever()
