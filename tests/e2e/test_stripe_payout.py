"""Stripe payouts to connected accounts through the whole dev stack: ingest (sealed
destination) -> Kafka -> gateway worker (opens it) -> Stripe Transfer in the sandbox ->
outcome, then the signed `transfer.created` webhook through the callback path.

The demo routing sends GB withdrawals to Stripe first and JSONPay second
(paystream_cli.demo_seed.WITHDRAWAL_ROUTES), so no routing change is needed here.

On the shared stack (tests/e2e/conftest.py): every account is a fresh one, and the
provider calls and outcome events looked at are the transaction's own.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from paystream_cli.demo_seed import WITHDRAWAL_ROUTES
from tests.e2e.stack import Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

CONNECTED = "acct_1Nv0FGQ9RKHgCVdK"
TO_ACCOUNT = {"type": "stripe_account", "account": CONNECTED}
BANK = {"holder_name": "Ada Lovelace", "iban": "GB33BUKB20201555555555"}
TERMINAL_EVENTS = (
    "paystream.transaction.succeeded.v1",
    "paystream.transaction.failed.v1",
    "paystream.transaction.rejected.v1",
)


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    assert WITHDRAWAL_ROUTES["GB"][:2] == ["stripe", "jsonpay"], "the tests assume this route"
    return shared_stack


def _funded(stack: Stack, amount: str = "100.00") -> str:
    """A fresh GB account with `amount` GBP from a succeeded deposit."""
    account = f"payout-{uuid.uuid4().hex[:8]}"
    deposit = stack.deposit("GB", account=account, amount=amount)
    assert stack.wait_status(deposit, {"succeeded", "failed"})["status"] == "succeeded"
    return account


def _balance(stack: Stack, account: str) -> tuple[str, str]:
    response = stack.client.get(f"/v1/accounts/{account}/balances", headers=stack.auth)
    assert response.status_code == 200, response.text
    [row] = response.json()["balances"]
    return row["available"], row["held"]


def _executions(stack: Stack, txn: uuid.UUID, provider: str) -> list[dict[str, Any]]:
    return [e for e in stack.ledger(provider=provider) if str(txn) in (e["idempotency_key"] or "")]


def _terminal_events(stack: Stack, txn: uuid.UUID) -> list[str]:
    rows = stack.query(
        "SELECT event_type FROM outbox WHERE data->>'transaction_id' = %s AND event_type = ANY(%s)",
        str(txn),
        list(TERMINAL_EVENTS),
    )
    return [event_type for (event_type,) in rows]


def test_withdrawal_to_connected_account_succeeds_once(stack: Stack) -> None:
    account = _funded(stack)
    txn = stack.deposit(
        "GB", account=account, amount="30.00", kind="withdrawals", destination=TO_ACCOUNT
    )
    snap = stack.wait_status(txn, {"succeeded", "failed", "unknown"})

    assert snap["status"] == "succeeded", snap
    assert snap["gateway"] == "stripe"
    assert [(a["gateway"], a["status"]) for a in snap["attempts"]] == [("stripe", "succeeded")]
    assert snap["provider_reference"].startswith("tr_")
    assert snap["destination"] == {"masked": "acct_…CVdK"}
    assert _balance(stack, account) == ("70.00", "0.00")
    # Exactly one Transfer, to the account the client named (the worker opened the seal).
    [transfer] = _executions(stack, txn, "stripe")
    assert transfer["id"] == snap["provider_reference"]
    assert transfer["kind"] == "withdrawal"
    assert transfer["destination"] == CONNECTED
    assert (transfer["amount_minor"], transfer["currency"]) == (3000, "gbp")
    assert _executions(stack, txn, "json") == []
    assert _terminal_events(stack, txn) == ["paystream.transaction.succeeded.v1"]

    # The signed transfer.created webhook comes back through the ingress and the callback
    # worker: it agrees with what the worker stored and adds no second outcome.
    key = f"ps-{txn}-1"

    def webhook_applied() -> list[tuple[Any, ...]] | None:
        delivered = stack.sandbox.get("/callbacks", params={"reference": key}).json()["data"]
        events = {d["event_id"] for d in delivered if d["event_type"] == "transfer.created"}
        if not events:
            return None
        rows = stack.query(
            "SELECT message_id FROM inbox WHERE consumer = 'callback-worker'"
            " AND split_part(message_id, ':', 2) = ANY(%s)",
            list(events),
        )
        return rows or None

    wait_for(webhook_applied, timeout=30, interval=0.2, what="transfer.created applied")
    assert stack.wait_status(txn, {"succeeded"})["version"] == snap["version"]
    assert _terminal_events(stack, txn) == ["paystream.transaction.succeeded.v1"]
    assert stack.query("SELECT kind FROM anomalies WHERE transaction_id = %s", txn) == []
    # What is stored readable about the payout holds only the mask.
    stored = stack.query(
        "SELECT t::text FROM transactions t WHERE id = %s"
        " UNION ALL SELECT a::text FROM attempts a WHERE transaction_id = %s"
        " UNION ALL SELECT o.data::text FROM outbox o WHERE data->>'transaction_id' = %s",
        txn,
        txn,
        str(txn),
    )
    assert stored
    assert not [row for (row,) in stored if CONNECTED in row]


def test_bank_details_to_stripe_fall_back_to_jsonpay(stack: Stack) -> None:
    account = _funded(stack)
    txn = stack.deposit("GB", account=account, amount="20.00", kind="withdrawals", destination=BANK)
    snap = stack.wait_status(txn, {"succeeded", "failed", "unknown"})

    assert snap["status"] == "succeeded", snap
    assert snap["gateway"] == "jsonpay"
    declined, paid = snap["attempts"]
    assert (declined["gateway"], declined["status"]) == ("stripe", "declined")
    assert declined["error"]["code"] == "destination_unsupported"
    assert "connected account" in declined["error"]["message"]
    assert (paid["gateway"], paid["status"]) == ("jsonpay", "succeeded")
    assert snap["destination"] == {"masked": "GB33 **** 5555"}
    # Stripe was never called; JSONPay paid once.
    assert _executions(stack, txn, "stripe") == []
    assert len(_executions(stack, txn, "json")) == 1
    assert _balance(stack, account) == ("80.00", "0.00")
    assert _terminal_events(stack, txn) == ["paystream.transaction.succeeded.v1"]


def test_bank_details_with_no_gateway_left_fail_and_release_the_hold(stack: Stack) -> None:
    account = _funded(stack)
    # JSONPay (the fallback) declines softly as well: no gateway is left.
    txn = stack.deposit(
        "GB",
        account=account,
        amount="20.00",
        kind="withdrawals",
        destination=BANK,
        metadata={"sandbox_scenario": "decline_processing_error"},
    )
    snap = stack.wait_status(txn, {"succeeded", "failed", "unknown"})

    assert snap["status"] == "failed", snap
    assert [(a["gateway"], a["status"]) for a in snap["attempts"]] == [
        ("stripe", "declined"),
        ("jsonpay", "declined"),
    ]
    assert snap["failure"]["code"] == "all_gateways_failed"
    assert "destination_unsupported" in snap["failure"]["message"]
    assert _executions(stack, txn, "stripe") == []
    assert _balance(stack, account) == ("100.00", "0.00")
    assert _terminal_events(stack, txn) == ["paystream.transaction.failed.v1"]
