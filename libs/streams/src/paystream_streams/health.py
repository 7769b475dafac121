"""/healthz and /metrics for worker processes: a consumer that stalls is reported."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

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
