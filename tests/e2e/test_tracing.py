"""One HTTP deposit through the dev stack is one trace: the ingest request, its publish, the
worker's intake, the provider attempt (and its HTTP call) and the relay's publish of the
outcome events, each the child of the one before, across four processes.

Every process writes its finished spans to the same file (PAYSTREAM_TRACE_FILE, JSON
lines), which the test reads: no collector needed. On the observed stack
(tests/e2e/conftest.py), with the metrics module: each test reads only the trace of its
own deposit. The untraced path (tracing off, ids carried in the events) is
test_json_logs.py's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TRACE_FILE
from tests.e2e.stack import Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def traced(observed_stack: Stack) -> tuple[Stack, Path]:
    return observed_stack, Path(observed_stack.settings[TRACE_FILE])


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    # Only whole lines: another process may be appending the last one as we read.
    return path.read_text().rpartition("\n")[0].splitlines()


def _of_trace(path: Path, txn: uuid.UUID) -> list[dict[str, Any]]:
    """Every span of the trace whose intake names `txn`. The file holds every span of the
    observed stack: only lines naming the transaction, then its trace, are parsed."""
    lines = _lines(path)
    naming = (json.loads(line) for line in lines if str(txn) in line)
    intake = [
        s
        for s in naming
        if s["name"] == "intake command"
        and s["attributes"].get("paystream.transaction_id") == str(txn)
    ]
    if not intake:
        return []
    trace_id = intake[0]["trace_id"]
    in_trace = (json.loads(line) for line in lines if trace_id in line)
    return [s for s in in_trace if s["trace_id"] == trace_id]


def test_one_deposit_is_one_trace_across_processes(traced: tuple[Stack, Path]) -> None:
    stack, path = traced
    txn = stack.deposit("DE", amount="12.34")
    assert stack.wait_status(txn, {"succeeded"})["status"] == "succeeded"

    def complete() -> list[dict[str, Any]] | None:
        spans = _of_trace(path, txn)
        relayed = {
            s["attributes"].get("paystream.event_type")
            for s in spans
            if s["name"] == "relay publish"
        }
        return spans if "paystream.transaction.succeeded.v1" in relayed else None

    spans = wait_for(
        complete,
        timeout=30,
        interval=0.2,
        # The relay joins the trace through the outbox row's traceparent, which storage
        # writes from paystream_telemetry.carry.traceparent_for.
        what="the relay span of the succeeded outcome in the deposit's trace",
    )
    by_id = {s["span_id"]: s for s in spans}

    def one(name: str, **attributes: object) -> dict[str, Any]:
        found = [
            s
            for s in spans
            if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, [s["name"] for s in spans])
        return found[0]

    [request] = [s for s in spans if s["kind"] == "SERVER"]
    assert request["service"] == "paystream-ingest-api"
    assert request["name"] == "POST /v1/deposits"
    assert request["parent_span_id"] is None  # the client sent no traceparent: the root

    [publish] = [s for s in spans if s["kind"] == "PRODUCER" and s["name"].startswith("publish")]
    assert publish["name"].endswith("paystream.commands")
    assert publish["parent_span_id"] == request["span_id"]
    assert publish["attributes"]["paystream.transaction_id"] == str(txn)

    intake = one("intake command", **{"paystream.transaction_id": str(txn)})
    assert intake["service"] == "paystream-gateway-worker"
    assert intake["parent_span_id"] == publish["span_id"]
    assert intake["attributes"]["paystream.intake.outcome"] == "accepted"

    snapshot = stack.snapshot(txn)
    assert snapshot is not None
    attempt = one(f"attempt {snapshot['gateway']}")
    assert attempt["parent_span_id"] == intake["span_id"]
    assert attempt["attributes"]["paystream.attempt"] == 1
    assert attempt["attributes"]["paystream.gateway"] == snapshot["gateway"]
    assert attempt["attributes"]["paystream.outcome_class"] == "succeeded"
    calls = [s for s in spans if s["parent_span_id"] == attempt["span_id"]]
    assert {s["kind"] for s in calls} == {"CLIENT"}, calls
    assert calls, "the provider's HTTP call is a span of the attempt (httpx instrumentation)"

    relayed = [s for s in spans if s["name"] == "relay publish"]
    assert {s["service"] for s in relayed} == {"paystream-relay"}
    # processing (written at intake) and succeeded (written with the answer): both in the
    # deposit's trace, children of the worker's span for the command.
    assert {s["attributes"]["paystream.event_type"] for s in relayed} >= {
        "paystream.transaction.processing.v1",
        "paystream.transaction.succeeded.v1",
    }
    for span in relayed:
        assert span["parent_span_id"] in by_id
        assert by_id[span["parent_span_id"]]["service"] == "paystream-gateway-worker"
    assert len({s["trace_id"] for s in spans}) == 1


def test_a_client_traceparent_is_continued(traced: tuple[Stack, Path]) -> None:
    stack, path = traced
    trace_id = uuid.uuid4().hex
    parent = "00-" + trace_id + "-" + "a1" * 8 + "-01"
    body = {"account_id": "acct-traced", "country": "DE", "amount": "5.00", "currency": "EUR"}
    headers = {**stack.auth, "Idempotency-Key": str(uuid.uuid4()), "traceparent": parent}
    response = stack.client.post("/v1/deposits", json=body, headers=headers)
    assert response.status_code == 202, response.text
    txn = uuid.UUID(response.json()["transaction_id"])
    stack.wait_status(txn, {"succeeded", "failed"})
    spans = wait_for(lambda: _of_trace(path, txn), timeout=30, what="the intake span")
    assert {s["trace_id"] for s in spans} == {trace_id}
    [request] = [s for s in spans if s["kind"] == "SERVER"]
    assert request["parent_span_id"] == "a1" * 8
