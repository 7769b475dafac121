"""Tracing with OpenTelemetry: off unless an exporter is configured, and then standard.

`setup_tracing(process)` installs the SDK's TracerProvider only when the environment names
an exporter (the standard `OTEL_*` variables, or `PAYSTREAM_TRACE_FILE` for tests).
Otherwise the API's global provider stays the no-op one, and the hot paths do not even ask
it for a span: they test `tracing_on()` (a global read) first.

Context travels in the CloudEvents `traceparent` extension (W3C trace context), so one
deposit is one trace across processes: `context_of(traceparent)` turns the header back
into a parent, `traceparent_of(span)` writes a span's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

TRACE_FILE_ENV = "PAYSTREAM_TRACE_FILE"
_TRACER_NAME = "paystream"
_PROPAGATOR = TraceContextTextMapPropagator()

Kind = Literal["internal", "server", "client", "producer", "consumer"]
KINDS: Final[dict[str, SpanKind]] = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}

_on = False
_shutdown: Callable[[], None] | None = None


def tracing_on() -> bool:
    """Whether this process records spans (an SDK provider with an exporter is installed)."""
    return _on


def exporters_configured(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the environment asks for, in the `OTEL_TRACES_EXPORTER` spelling
    ("otlp", "console", "file"); empty means tracing stays off.

    An OTLP endpoint alone counts as asking for OTLP (the exporter the SDK defaults to),
    `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn everything off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if "none" in named:
        named = []
    elif not named and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        named = ["otlp"]
    if env.get(TRACE_FILE_ENV):
        named.append("file")
    return list(dict.fromkeys(named))


def setup_tracing(process: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK for this process if an exporter is configured; returns whether
    tracing is on. Called once per process (a server's worker processes each call it from
    their app factory). `OTEL_SERVICE_NAME` wins over `paystream-<process>`; the sampler
    comes from `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (the SDK reads them)."""
    global _on, _shutdown
    if _on:
        return True
    env = os.environ if env is None else env
    names = exporters_configured(env)
    if not names:
        return False
    # Imported here: a process with tracing off never loads the SDK.
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=_resource(process, env))
    processors: list[SpanProcessor] = []
    for name in names:
        if name == "file":
            from paystream_telemetry.spanfile import JsonLinesSpanExporter

            # Written as each span ends: a test reads the file while the process runs, and
            # a process stopped by a signal loses nothing it finished.
            processors.append(SimpleSpanProcessor(JsonLinesSpanExporter(env[TRACE_FILE_ENV])))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; ignored", name)
    if not processors:
        return False
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _instrument_httpx()
    _on = True
    _shutdown = provider.shutdown
    log.info("tracing on: exporters %s", ",".join(names))
    return True


def use_exporter(exporter: SpanExporter) -> None:
    """The test hook inside one process: every span from now on also goes to `exporter`
    (e.g. the SDK's InMemorySpanExporter), and tracing is on. The global provider can be
    set once per process, so a second call adds to the first one's provider."""
    global _on, _shutdown
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=_resource("test", os.environ))
        trace.set_tracer_provider(provider)
        _shutdown = provider.shutdown
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _instrument_httpx()
    _on = True


def shutdown_tracing() -> None:
    """Flush and stop the exporters, and stop tracing (the SDK also flushes atexit)."""
    global _on, _shutdown
    if _shutdown is not None:
        _shutdown()
    _on, _shutdown = False, None
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _resource(process: str, env: Mapping[str, str]) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    attributes: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = f"paystream-{process}"
    return Resource.create(attributes)  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win


def _instrument_httpx() -> None:
    """Every outgoing httpx call (the provider adapters, the Stripe SDK's httpx client)
    becomes a client span of the attempt, with `traceparent` sent to the provider."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def tracer() -> Tracer:
    return trace.get_tracer(_TRACER_NAME)


def context_of(traceparent: str | None) -> Context | None:
    """The parent a CloudEvent's `traceparent` names; None when absent or malformed."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` of `span`, to carry in the events it causes."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def current_traceparent() -> str | None:
    span = trace.get_current_span()
    return traceparent_of(span) if span.get_span_context().is_valid else None


def link_of(traceparent: str | None) -> Link | None:
    ctx = context_of(traceparent)
    if ctx is None:
        return None
    return Link(trace.get_current_span(ctx).get_span_context())


class _Off(AbstractContextManager[None]):
    """What `span` returns when tracing is off: one shared object, nothing allocated."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF: Final = _Off()


def span(
    name: str,
    *,
    parent: str | Context | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span | None]:
    """A current span named `name` when tracing is on (child of `parent`: a traceparent
    or a context, else of the current span); None and no work at all when it is off."""
    if not _on:
        return _OFF
    ctx = context_of(parent) if isinstance(parent, str) else parent
    return tracer().start_as_current_span(
        name, context=ctx, kind=KINDS[kind], attributes=dict(attributes or {})
    )


@contextmanager
def attached(ctx: Context | None) -> Iterator[None]:
    """Run the block with `ctx` as the current context (its span the parent of the spans
    started in it)."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
