"""An in-memory span exporter for the telemetry unit tests, installed once per process (the
global tracer provider can be set only once) and switched off again after them, so other
unit tests run with tracing off as a service does by default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from paystream_telemetry import tracing

_EXPORTER = InMemorySpanExporter()
_installed = False


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    global _installed
    if not _installed:
        tracing.use_exporter(_EXPORTER)
        _installed = True
    tracing._on = True
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        tracing._on = False
        instrumentor = HTTPXClientInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
