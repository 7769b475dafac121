"""PAYSTREAM_LOG_FORMAT=json on the dev stack: a withdrawal's log lines, in the ingest API
and in the gateway worker, are JSON objects naming its transaction and the trace its client
started (tracing off: the id comes from the traceparent the command carries), and no log
line of any paystream process holds its bank details or a secret (about 30 s)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.stack import Stack, running_stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

IBAN = "DE89370400440532013000"
DESTINATION = {"holder_name": "Erika Mustermann", "iban": IBAN}
# What the sandbox provisions for the demo connections (paystream_sandbox.client).
SECRETS = re.compile(r"whsec_[0-9a-f]{32}|sk_test_[0-9a-f]{24}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("json-logs")
    with running_stack(tmp, PAYSTREAM_LOG_FORMAT="json", PAYSTREAM_LOG_LEVEL="DEBUG") as running:
        yield running


def _service_logs(stack: Stack) -> dict[str, str]:
    """Each paystream service's log, by service; the sandbox (the provider, whose job is
    to see the bank details) is left out."""
    return {
        path.stem: path.read_text(errors="replace")
        for path in (stack.home / "logs").glob("*.log")
        if path.stem != "sandbox"
    }


def _json_lines(text: str) -> list[dict[str, Any]]:
    # Only whole lines: a service may be appending the last one as we read.
    whole = text.rpartition("\n")[0]
    return [json.loads(line) for line in whole.splitlines() if line.startswith("{")]


def test_withdrawal_lines_carry_ids_and_never_bank_details_or_secrets(stack: Stack) -> None:
    funded = stack.deposit("DE", account="json-logs", amount="100.00")
    assert stack.wait_status(funded, {"succeeded"})["status"] == "succeeded"
    trace_id = uuid.uuid4().hex
    body = {
        "account_id": "json-logs",
        "country": "DE",
        "amount": "30.00",
        "currency": "EUR",
        "destination": DESTINATION,
    }
    headers = {
        **stack.auth,
        "Idempotency-Key": str(uuid.uuid4()),
        "traceparent": f"00-{trace_id}-{'b2' * 8}-01",
    }
    response = stack.client.post("/v1/withdrawals", json=body, headers=headers)
    assert response.status_code == 202, response.text
    txn = response.json()["transaction_id"]
    stack.wait_status(uuid.UUID(txn), {"succeeded", "failed"})

    def lines_of_txn() -> dict[str, list[dict[str, Any]]] | None:
        found = {
            name: [line for line in _json_lines(text) if line.get("transaction") == txn]
            for name, text in _service_logs(stack).items()
        }
        return found if found.get("ingest-api") and found.get("gateway-worker") else None

    found = wait_for(lines_of_txn, timeout=30, what="log lines naming the withdrawal")
    for service in ("ingest-api", "gateway-worker"):
        for line in found[service]:
            assert line["trace_id"] == trace_id, line
            assert line["tenant"] == stack.env["PAYSTREAM_DEMO_TENANT_ID"], line
            assert {"time", "level", "logger", "message", "process"} <= line.keys(), line
            assert line["process"] == service

    logs = _service_logs(stack)
    assert {"ingest-api", "gateway-worker", "relay", "callback-ingress"} <= logs.keys()
    for service, text in logs.items():
        assert IBAN not in text, f"{service} logged the bank details"
        assert "Erika Mustermann" not in text, f"{service} logged the account holder"
        assert stack.env["PAYSTREAM_DEMO_API_KEY"] not in text, f"{service} logged the API key"
        assert SECRETS.search(text) is None, f"{service} logged a connection secret"
    # Every line of the processes is a JSON object, but the dev supervisor's own markers
    # ("--- <time> starting: ...") between runs.
    for service in ("ingest-api", "gateway-worker", "relay"):
        whole = logs[service].rpartition("\n")[0]  # the last line may be half-written
        written = [text for text in whole.splitlines() if not text.startswith("--- ")]
        assert written, service
        for text in written:
            assert isinstance(json.loads(text), dict), (service, text)
