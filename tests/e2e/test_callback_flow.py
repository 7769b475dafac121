"""Provider callbacks through the whole dev stack: sandbox -> ingress -> Kafka -> worker.

On the shared stack (tests/e2e/conftest.py): its accounts are its own (a run suffix), and
the ledger check at the end covers every tenant's entries, other modules' included, which
must balance just the same."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

DESTINATION = {"holder_name": "Erika Mustermann", "iban": "DE89370400440532013000"}
RUN = uuid.uuid4().hex[:6]  # this run's accounts: a stack may have served other runs


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Iterator[Stack]:
    yield shared_stack
    # After every flow: each tenant's ledger sums to zero per currency.
    sums = shared_stack.query(
        "SELECT tenant_id, currency, sum(amount_minor) FROM ledger_entries GROUP BY 1, 2"
    )
    assert sums, "the flows should have posted entries"
    assert all(total == 0 for _, _, total in sums), sums


def _balance(stack: Stack, account: str) -> tuple[str, str]:
    response = stack.client.get(f"/v1/accounts/{account}/balances", headers=stack.auth)
    assert response.status_code == 200, response.text
    [row] = response.json()["balances"]
    return row["available"], row["held"]


def test_deposit_pending_then_signed_callback_succeeds(stack: Stack) -> None:
    txn = stack.deposit(
        "DE", account=f"cb-dep-{RUN}", amount="40.00", metadata={"sandbox_scenario": "pending"}
    )
    stack.wait_status(txn, {"pending", "succeeded"})
    snap = stack.wait_status(txn, {"succeeded", "failed"}, timeout=60)
    assert snap["status"] == "succeeded", snap
    assert _balance(stack, f"cb-dep-{RUN}") == ("40.00", "0.00")
    logged = stack.query(
        "SELECT verdict FROM callback_log l JOIN connections c ON c.id = l.connection_id"
        " WHERE c.gateway_code = %s",
        snap["gateway"],
    )
    assert ("accepted",) in logged


def test_withdrawal_holds_then_settles_on_callback(stack: Stack) -> None:
    funded = stack.deposit("DE", account=f"cb-wd-{RUN}", amount="100.00")
    assert stack.wait_status(funded, {"succeeded"})["status"] == "succeeded"
    txn = stack.deposit(
        "DE",
        account=f"cb-wd-{RUN}",
        amount="30.00",
        kind="withdrawals",
        destination=DESTINATION,
        metadata={"sandbox_scenario": "pending"},
    )
    pending = stack.wait_status(txn, {"pending", "succeeded", "failed"})
    if pending["status"] == "pending":
        assert _balance(stack, f"cb-wd-{RUN}") == ("70.00", "30.00"), "held while pending"
    snap = stack.wait_status(txn, {"succeeded", "failed"}, timeout=60)
    assert snap["status"] == "succeeded", snap
    assert _balance(stack, f"cb-wd-{RUN}") == ("70.00", "0.00")
    assert snap["destination"] == {"masked": "DE89 **** 3000"}


def test_failed_withdrawal_releases_the_hold(stack: Stack) -> None:
    funded = stack.deposit("DE", account=f"cb-fail-{RUN}", amount="50.00")
    assert stack.wait_status(funded, {"succeeded"})["status"] == "succeeded"
    txn = stack.deposit(
        "DE",
        account=f"cb-fail-{RUN}",
        amount="20.00",
        kind="withdrawals",
        destination=DESTINATION,
        metadata={"sandbox_scenario": "pending_fail"},
    )
    snap = stack.wait_status(txn, {"succeeded", "failed"}, timeout=60)
    assert snap["status"] == "failed", snap
    assert _balance(stack, f"cb-fail-{RUN}") == ("50.00", "0.00")
