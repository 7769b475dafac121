"""A minimal /healthz + /metrics HTTP server for the worker processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

Report = Callable[[], tuple[int, dict[str, Any]]]


async def serve_health(port: int, report: Report, registry: CollectorRegistry) -> None:
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
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_request, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
