"""Tracing: off unless an exporter is configured; spans parented by a CloudEvent's
traceparent; the per-message spans of a batch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from paystream_telemetry import tracing
from paystream_telemetry.carry import carrying, traceparent_for
from paystream_telemetry.messages import MessageSpans
from paystream_telemetry.spanfile import JsonLinesSpanExporter

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"PAYSTREAM_TRACE_FILE": "/tmp/spans.jsonl"}, ["file"]),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_tracing_is_off_unless_an_exporter_is_configured(
    env: dict[str, str], expected: list[str]
) -> None:
    assert tracing.exporters_configured(env) == expected


def test_setup_without_an_exporter_leaves_tracing_off() -> None:
    assert tracing.setup_tracing("test", {}) is False
    assert not tracing.tracing_on()
    with tracing.span("nothing") as span:
        assert span is None


def test_context_of_reads_a_traceparent_and_drops_a_malformed_one() -> None:
    assert tracing.context_of(None) is None
    assert tracing.context_of("00-not-a-trace-01") is None
    assert tracing.context_of(f"00-{'0' * 32}-{PARENT}-01") is None  # an invalid trace id
    assert tracing.context_of(TRACEPARENT) is not None


def test_a_span_is_the_child_of_the_traceparent_it_is_given(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("child", parent=TRACEPARENT, attributes={"a": 1}) as span:
        assert span is not None
        carried = tracing.traceparent_of(span)
    [finished] = spans.get_finished_spans()
    assert finished.parent is not None
    assert format_span_id(finished.parent.span_id) == PARENT
    context = finished.get_span_context()
    assert context is not None
    assert format_trace_id(context.trace_id) == TRACE
    assert carried == f"00-{TRACE}-{format_span_id(context.span_id)}-01"


def test_message_spans_off_only_pass_the_traceparents_on() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    batch: MessageSpans[uuid.UUID] = MessageSpans("intake command", 3)
    batch.add(first, TRACEPARENT, {"k": first})
    batch.add(second, None, {})
    batch.add(first, f"00-{'1' * 32}-{PARENT}-01", {})  # a copy: the first one carries it
    assert not batch.recording
    assert batch.traceparents() == {first: TRACEPARENT}
    batch.end()


def test_message_spans_on_are_children_of_each_message_trace(
    spans: InMemorySpanExporter,
) -> None:
    traced, untraced = uuid.uuid4(), uuid.uuid4()
    batch: MessageSpans[uuid.UUID] = MessageSpans("intake command", 2)
    batch.add(traced, TRACEPARENT, {"paystream.transaction_id": traced})
    batch.add(untraced, None, {"paystream.transaction_id": untraced})
    carried = batch.traceparents()
    assert batch.recording
    batch.end({traced: "accepted"}, attribute="paystream.intake.outcome", otherwise="rejected")
    finished = {
        str((s.attributes or {})["paystream.transaction_id"]): s for s in spans.get_finished_spans()
    }
    child, root = finished[str(traced)], finished[str(untraced)]
    assert child.parent is not None
    assert format_span_id(child.parent.span_id) == PARENT
    assert root.parent is None  # no traceparent: a trace of its own
    assert child.attributes is not None
    assert root.attributes is not None
    assert child.attributes["paystream.intake.outcome"] == "accepted"
    assert root.attributes["paystream.intake.outcome"] == "rejected"
    assert child.attributes["messaging.batch.message_count"] == 2
    assert carried[traced].split("-")[1] == TRACE
    assert carried[traced].split("-")[2] != PARENT  # the intake span's own id


def test_message_spans_fail_marks_every_span_failed(spans: InMemorySpanExporter) -> None:
    batch: MessageSpans[int] = MessageSpans("apply callback", 2)
    batch.add(0, TRACEPARENT, {})
    batch.add(1, None, {})
    batch.fail(RuntimeError("database gone"))
    assert [s.status.status_code.name for s in spans.get_finished_spans()] == ["ERROR", "ERROR"]


def test_carrying_names_the_traceparent_of_each_transaction() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    assert traceparent_for(one) is None
    with carrying({one: "tp-1"}):
        with carrying({two: "tp-2"}):
            assert (traceparent_for(one), traceparent_for(two)) == ("tp-1", "tp-2")
        assert traceparent_for(two) is None
    assert traceparent_for(one) is None


def test_the_span_file_holds_one_json_line_per_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    with (
        tracing.span("outer", parent=TRACEPARENT, kind="producer", attributes={"n": 2}),
        tracing.span("inner"),
    ):
        pass
    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(str(path))
    exporter.export(spans.get_finished_spans())
    exporter.shutdown()
    inner, outer = (json.loads(line) for line in path.read_text().splitlines())
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["parent_span_id"] == outer["span_id"]
    assert outer["parent_span_id"] == PARENT
    assert inner["trace_id"] == outer["trace_id"] == TRACE
    assert outer["kind"] == "PRODUCER"
    assert outer["attributes"] == {"n": 2}
