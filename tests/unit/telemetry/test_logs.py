"""Log lines: text by default, JSON objects with PAYSTREAM_LOG_FORMAT=json, naming the
tenant, transaction and trace of the work at hand."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_trace_id

from paystream_telemetry import tracing
from paystream_telemetry.logs import JsonFormatter, log_context, log_format, setup_logging

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("ingest-api"))
    logger = logging.getLogger("paystream_test_json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_names_the_work_at_hand(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    tenant, txn = uuid.uuid4(), uuid.uuid4()
    logger.info("outside")
    with log_context(tenant=tenant, transaction=txn, traceparent=TRACEPARENT):
        logger.warning("first line\nsecond line")
        with log_context(transaction=None):  # None adds nothing
            logger.debug("inner")
    outside, inside, inner = _lines(stream)
    assert outside.keys() == {"time", "level", "process", "logger", "message"}
    assert inside["message"] == "first line\nsecond line"  # one line in the file
    assert len(stream.getvalue().splitlines()) == 3
    assert inside["level"] == "WARNING"
    assert inside["logger"] == "paystream_test_json"
    assert inside["process"] == "ingest-api"
    assert inside["tenant"] == str(tenant)
    assert inside["transaction"] == str(txn)
    assert inside["trace_id"] == TRACE
    assert inner["transaction"] == str(txn)


def test_the_trace_id_is_the_current_span_when_tracing_is_on(
    captured: tuple[logging.Logger, io.StringIO], spans: InMemorySpanExporter
) -> None:
    logger, stream = captured
    with (
        log_context(traceparent=f"00-{'1' * 32}-b7ad6b7169203331-01"),
        tracing.span("work", parent=TRACEPARENT) as span,
    ):
        assert span is not None
        logger.info("in the span")
    [line] = _lines(stream)
    assert line["trace_id"] == format_trace_id(span.get_span_context().trace_id) == TRACE


def test_an_exception_goes_with_its_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [line] = _lines(stream)
    assert "ValueError: boom" in line["exception"]


def test_text_is_the_default_and_an_unknown_format_is_refused() -> None:
    assert log_format({}) == "text"
    assert log_format({"PAYSTREAM_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="PAYSTREAM_LOG_FORMAT"):
        log_format({"PAYSTREAM_LOG_FORMAT": "xml"})


def test_setup_replaces_the_root_handler_and_silences_the_stripe_sdk() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        setup_logging("relay", {"PAYSTREAM_LOG_FORMAT": "json", "PAYSTREAM_LOG_LEVEL": "debug"})
        [handler] = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        # It logs request bodies (payout destinations) at DEBUG.
        assert not logging.getLogger("stripe").isEnabledFor(logging.INFO)
        setup_logging("relay", {})
        [handler] = root.handlers
        assert not isinstance(handler.formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
