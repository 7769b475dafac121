"""Log setup of every paystream process: text (the default, for `make dev`) or JSON lines.

`PAYSTREAM_LOG_FORMAT=json` writes one JSON object per line: time, level, process, logger,
message, and where known the tenant, transaction and trace of the work at hand. Handlers
name that work with `log_context(tenant=..., transaction=..., traceparent=...)` (context
variables: each request and each task sees its own); the trace id comes from the current
span when tracing is on, else from the traceparent the work carries.

Log calls must never pass secrets or payout destinations: the formatter writes what it is
given, it cannot know what is sensitive.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from opentelemetry import trace

from paystream_telemetry import tracing

FORMAT_ENV: Final = "PAYSTREAM_LOG_FORMAT"
LEVEL_ENV: Final = "PAYSTREAM_LOG_LEVEL"
FORMATS: Final = ("text", "json")

_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})
# Values are kept as given (a UUID, say) and turned into text only when a line is written:
# naming the work costs next to nothing when nothing is logged.
_context: ContextVar[Mapping[str, object]] = ContextVar("paystream_log_context", default=_EMPTY)


class log_context(AbstractContextManager[None]):
    """Name the work at hand in every log line written inside the block (None values are
    left out; inner blocks add to outer ones). Use `tenant`, `transaction`, `traceparent`.
    A class, not a generator: it runs per payment on the hot path (a few hundred ns)."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: object) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, object]] | None = None

    def __enter__(self) -> None:
        # None values are kept (cheaper than filtering) and skipped when a line is written;
        # an inner None does not hide an outer value.
        outer = _context.get()
        fields = self._fields
        if outer:
            fields = {**outer, **{k: v for k, v in fields.items() if v is not None}}
        self._token = _context.set(fields)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def context_fields() -> Mapping[str, object]:
    return _context.get()


def trace_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the work at hand: the current span's, else the carried
    traceparent's (`00-<trace id>-<parent id>-<flags>`), else (None, None)."""
    if tracing.tracing_on():
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)
    traceparent = _context.get().get("traceparent")
    if isinstance(traceparent, str):
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return parts[1], parts[2]
    return None, None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self._process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get()
        for field in ("tenant", "transaction"):
            value = context.get(field)
            if value is not None:
                out[field] = str(value)
        trace_id, span_id = trace_ids()
        if trace_id is not None:
            out["trace_id"] = trace_id
            out["span_id"] = span_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def text_formatter(process: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s")


def log_format(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = env.get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def setup_logging(process: str, env: Mapping[str, str] | None = None) -> None:
    """The root handler of this process (stderr), in the format the environment asks for;
    replaces any handler set before."""
    env = os.environ if env is None else env
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(process) if log_format(env) == "json" else text_formatter(process)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(env.get(LEVEL_ENV, "INFO").upper())
    # alembic is chatty at INFO; the Stripe SDK logs every request at INFO and its bodies
    # (payout destinations among them) at DEBUG: never, whatever the level asked for.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("stripe").setLevel(logging.WARNING)
