"""`paystream audit` on the dev stack: clean after a load with a kill -9 of the gateway
worker in the middle (deposits and withdrawals, failures, pending ones settled by signed
callbacks, holds refused for insufficient funds), then exit 1 with a message naming the
account or the transaction when the test corrupts a balance or deletes an outcome event;
the reconciler's audit (every second here) reports the same.

On the observed stack (tests/e2e/conftest.py), whose reconciler audits every second, after
its other modules (`stack_last`: this one kills the worker and leaves an event deleted).
Its accounts are its own; the audits check every payment on the stack, the other modules'
too, which must be just as clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from tests.e2e.stack import Stack
from tests.support.polling import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.stack_last]

DESTINATION = {"holder_name": "Erika Mustermann", "iban": "DE89370400440532013000"}
COUNTRIES = ("DE", "FR", "GB", "US", "BR", "NG")
ACCOUNTS = 8
OPEN = ("received", "processing", "pending", "action_required")


@pytest.fixture(scope="module")
def stack(observed_stack: Stack) -> Stack:
    # The reconciler's audit every second, so its metrics follow the corruption below.
    assert observed_stack.settings["PAYSTREAM_RECONCILER_AUDIT_INTERVAL_S"] == "1"
    return observed_stack


def _audit(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, against the stack's database."""
    env = {**os.environ, "PAYSTREAM_DATABASE_URL": stack.env["PAYSTREAM_DATABASE_URL"]}
    return subprocess.run(
        [sys.executable, "-m", "paystream_cli.main", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _worker_pid(stack: Stack) -> int | None:
    try:
        return stack.service_pid("worker gateway")
    except AssertionError:  # between a death and its restart
        return None


def _load(stack: Stack) -> list[uuid.UUID]:
    """Fund accounts, then deposits and withdrawals of every kind, with the gateway worker
    killed (and restarted by `paystream dev`) half way."""
    funding = [stack.deposit("DE", account=f"audit-{i}", amount="100.00") for i in range(ACCOUNTS)]
    for txn in funding:
        stack.wait_status(txn, {"succeeded"})
    txns = list(funding)
    killed = False
    for i in range(ACCOUNTS * 4):
        account = f"audit-{i % ACCOUNTS}"
        if i == ACCOUNTS * 2:
            victim = wait_for(lambda: _worker_pid(stack), timeout=60, what="gateway worker")
            os.kill(victim, signal.SIGKILL)
            killed = True
        match i % 4:
            case 0:  # settled later by a signed callback: succeeded or failed
                scenario = "pending" if i % 8 == 0 else "pending_fail"
                country = COUNTRIES[i % len(COUNTRIES)]
                txns.append(stack.deposit(country, metadata={"sandbox_scenario": scenario}))
            case 1:  # a withdrawal settled or failed by callback: the hold is settled/released
                scenario = "pending" if i % 8 == 1 else "pending_fail"
                txns.append(
                    stack.deposit(
                        "DE",
                        account=account,
                        amount="15.00",
                        kind="withdrawals",
                        destination=DESTINATION,
                        metadata={"sandbox_scenario": scenario},
                    )
                )
            case 2:  # more than the account holds: the hold is refused -> rejected
                txns.append(
                    stack.deposit(
                        "DE",
                        account=account,
                        amount="5000.00",
                        kind="withdrawals",
                        destination=DESTINATION,
                    )
                )
            case _:  # answered at once
                txns.append(stack.deposit(COUNTRIES[i % len(COUNTRIES)], account=account))
    assert killed
    wait_for(lambda: _worker_pid(stack) not in (None, victim), timeout=60, what="worker restarted")
    return txns


def _statuses(stack: Stack, txns: list[uuid.UUID]) -> Counter[str]:
    rows = stack.query("SELECT status FROM transactions WHERE id = ANY(%s)", txns)
    return Counter(status for (status,) in rows)


def test_audit_passes_after_a_load_with_a_crash_and_names_each_corruption(stack: Stack) -> None:
    txns = _load(stack)

    def settled() -> Counter[str] | None:
        statuses = _statuses(stack, txns)
        done = sum(statuses.values()) == len(txns) and not set(statuses) & set(OPEN)
        return statuses if done else None

    # A killed worker's partitions wait for its session timeout, restart and group join.
    statuses = wait_for(settled, timeout=180, interval=0.2, what="every transaction settled")
    assert {"succeeded", "failed", "rejected"} <= set(statuses), statuses

    clean = _audit(stack)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK: no violations" in clean.stdout
    print(f"\naudit after the load ({dict(statuses)}):\n{clean.stdout}")

    # A balance one cent off its entries: named by account and currency.
    stack.query(
        "UPDATE balances SET available_minor = available_minor + 1"
        " WHERE account_id = 'audit-3' AND currency = 'EUR' RETURNING 1"
    )
    corrupted = _audit(stack, "--verbose")
    assert corrupted.returncode == 1, corrupted.stdout + corrupted.stderr
    assert "FAILED: 1 violation(s) in 1 check(s)" in corrupted.stdout
    assert "account 'audit-3' EUR: balance available" in corrupted.stdout
    # The reconciler's audit sees it too (its gauge; it logs the counts it exports).
    reconciler_log = stack.home / "logs" / "reconciler.log"
    wait_for(
        lambda: (
            "money audit: violations {'balances_match_entries': 1}" in reconciler_log.read_text()
        ),
        timeout=30,
        what="the reconciler's audit",
    )
    stack.query(
        "UPDATE balances SET available_minor = available_minor - 1"
        " WHERE account_id = 'audit-3' AND currency = 'EUR' RETURNING 1"
    )
    assert _audit(stack).returncode == 0

    # A succeeded withdrawal's outcome event deleted: named by transaction.
    [(withdrawal,)] = stack.query(
        "SELECT id FROM transactions WHERE type = 'withdrawal' AND status = 'succeeded'"
        " ORDER BY id LIMIT 1"
    )
    stack.query(
        "DELETE FROM outbox WHERE data->>'transaction_id' = %s"
        " AND event_type = 'paystream.transaction.succeeded.v1' RETURNING 1",
        str(withdrawal),
    )
    missing = _audit(stack, "--verbose")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert (
        f"withdrawal {withdrawal} is succeeded but has 0 terminal outcome events, not 1"
        in missing.stdout
    )
    document = json.loads(_audit(stack, "--json").stdout)
    failing = {c["check"]: c["violations"] for c in document["checks"] if c["violations"]}
    # No terminal event, and the newest event left is the pending one before it.
    assert failing == {"terminal_events": 1, "last_event_matches": 1}
    assert document["checks"][4]["details"][0]["transaction_id"] == str(withdrawal)
