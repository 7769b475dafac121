"""The server span of every HTTP request of a paystream service (ASGI instrumentation)."""

from __future__ import annotations

from typing import Any

from paystream_telemetry.tracing import tracing_on

# Probes and scrapes are not requests anyone traces: no span, no cost.
_EXCLUDED = "/healthz,/readyz,/metrics"


def add_tracing(app: Any) -> None:
    """Add the OpenTelemetry ASGI middleware to a Starlette/FastAPI `app` (as its
    outermost layer: call it last) when tracing is on; nothing otherwise. It continues the
    trace of an incoming `traceparent` header and makes the request's span current."""
    if not tracing_on():
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(
        OpenTelemetryMiddleware, excluded_urls=_EXCLUDED, exclude_spans=["receive", "send"]
    )
