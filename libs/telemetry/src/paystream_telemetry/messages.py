"""Spans of the messages a worker takes in a batch: one per message, each the child of the
trace its CloudEvent carries, so one deposit stays one trace however records are batched.

With tracing off nothing is started: the spans object only keeps the traceparents the
messages came with, which the events they cause carry on (`traceparents()`)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from opentelemetry.trace import Span, Status, StatusCode

from paystream_telemetry import tracing

K = TypeVar("K", bound=Hashable)


class MessageSpans(Generic[K]):
    def __init__(self, name: str, batch_size: int, kind: tracing.Kind = "consumer") -> None:
        self._name = name
        self._kind = tracing.KINDS[kind]
        self._batch_size = batch_size
        self._on = tracing.tracing_on()
        self._start_ns = time.time_ns() if self._on else 0
        self._spans: list[tuple[K, Span]] = []
        self._traceparents: dict[K, str] = {}

    def add(self, key: K, traceparent: str | None, attributes: Mapping[str, object]) -> None:
        """The message about `key` (a transaction id), which carried `traceparent`. The
        first message of a key is the one whose trace the key's events carry on.
        `attributes` values other than str/int/float/bool are written as text (only when
        tracing is on: a UUID costs nothing to pass)."""
        if not self._on:
            if traceparent is not None:
                self._traceparents.setdefault(key, traceparent)
            return
        started = tracing.tracer().start_span(
            self._name,
            context=tracing.context_of(traceparent),
            kind=self._kind,
            attributes={
                **{k: _attribute(v) for k, v in attributes.items()},
                "messaging.batch.message_count": self._batch_size,
            },
            start_time=self._start_ns,
        )
        self._spans.append((key, started))
        if key not in self._traceparents:
            carried = tracing.traceparent_of(started)
            if carried is not None:
                self._traceparents[key] = carried

    def traceparents(self) -> dict[K, str]:
        """key -> the traceparent the events caused by its message carry: its span's when
        tracing is on, else the one it came with."""
        return self._traceparents

    @property
    def on(self) -> bool:
        """Whether spans are started (tracing was on when this batch began)."""
        return self._on

    @property
    def recording(self) -> bool:
        return bool(self._spans)

    def end(
        self, outcomes: Mapping[K, str] | None = None, *, attribute: str = "", otherwise: str = ""
    ) -> None:
        """End every span, with `attribute` set to the key's outcome (`otherwise` for a key
        without one) when an attribute is named."""
        for key, started in self._spans:
            if attribute:
                outcome = outcomes.get(key, otherwise) if outcomes is not None else otherwise
                if outcome:
                    started.set_attribute(attribute, outcome)
            started.end()
        self._spans = []

    def fail(self, exc: BaseException) -> None:
        """End every span as failed by `exc` (the batch is retried: new spans then)."""
        for _, started in self._spans:
            started.record_exception(exc)
            started.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            started.end()
        self._spans = []


def _attribute(value: object) -> Any:
    return value if isinstance(value, str | int | float | bool) else str(value)
