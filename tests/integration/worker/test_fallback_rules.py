"""design.md §3 on a real database: fall back only when the attempt provably did not run."""

from __future__ import annotations

import pytest

from paystream_gateway_worker.handler import handle
from paystream_gateways.errors import Ambiguous, AmbiguousReason, NotExecuted, NotExecutedReason
from paystream_gateways.protocol import (
    ActionRequired,
    Declined,
    NotFound,
    Outcome,
    PaymentRequest,
    Pending,
    StatusQuery,
    StatusResult,
    Succeeded,
)
from tests.integration.worker.conftest import WorkerEnv

pytestmark = pytest.mark.integration


def ok(request: PaymentRequest) -> Outcome:
    return Succeeded(f"ref-{request.idempotency_key}")


def refused(request: PaymentRequest) -> Outcome:
    raise NotExecuted("gw", NotExecutedReason.CONNECT_FAILED, "connection refused")


def timeout(request: PaymentRequest) -> Outcome:
    raise Ambiguous("gw", AmbiguousReason.TIMEOUT, "read timeout after sending")


async def test_priority_one_gateway_succeeds_and_credits(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", ok)
    txn, record = worker_env.command(amount_minor=2500)
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "succeeded"
    assert worker_env.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert a.calls == [f"ps-{txn}-1"]
    assert worker_env.balance() == (2500, 0)
    # Redelivery of the same command: no new call, no new event.
    await handle(worker_env.deps, record)
    assert a.calls == [f"ps-{txn}-1"]
    assert len(worker_env.outcomes(txn)) == 2


async def test_not_executed_falls_back_to_the_next_priority(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", refused)
    b = worker_env.gateway("gw_b", ok)
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "succeeded"
    assert len(a.calls) == 1, "not-executed errors are not retried on the same gateway"
    assert b.calls == [f"ps-{txn}-2"]
    attempts = worker_env.query(
        "SELECT seq, gateway_code, status, error_code FROM attempts WHERE transaction_id = %s"
        " ORDER BY seq",
        txn,
    )
    assert attempts == [
        (1, "gw_a", "not_executed", "connect_failed"),
        (2, "gw_b", "succeeded", None),
    ]


async def test_soft_decline_falls_back_hard_decline_fails(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", lambda r: Declined("do_not_honor", "try another", True))
    worker_env.gateway("gw_b", lambda r: Declined("insufficient_funds", "no money", False))
    c = worker_env.gateway("gw_c", ok)
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "failed"
    assert c.calls == [], "a hard decline must not fall back"
    failure = worker_env.query("SELECT failure_code FROM transactions WHERE id = %s", txn)
    assert failure == [("insufficient_funds",)]
    assert worker_env.outcomes(txn)[-1] == ("failed", 3)


async def test_ambiguous_never_falls_back_and_ends_unknown(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=False)
    b = worker_env.gateway("gw_b", ok)
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "unknown"
    assert b.calls == [], "never a second gateway while the first may have executed"
    assert a.calls == [f"ps-{txn}-1"] * 3, "retried with the same idempotency key"
    assert worker_env.outcomes(txn)[-1][0] == "unknown"


async def test_ambiguous_resolved_by_lookup(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", timeout)

    def found(query: StatusQuery) -> StatusResult:
        return Succeeded(f"found-{query.idempotency_key}")

    a.lookup = found
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "succeeded"
    ref = worker_env.query("SELECT provider_reference FROM transactions WHERE id = %s", txn)
    assert ref == [(f"found-ps-{txn}-1",)]


async def test_ambiguous_then_proven_absent_falls_back(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=True)
    b = worker_env.gateway("gw_b", ok)
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "succeeded"
    assert b.calls == [f"ps-{txn}-2"]


async def test_pending_and_action_required_wait_for_callbacks(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", lambda r: Pending("pi_1"))
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "pending"
    assert worker_env.balance() == (0, 0), "nothing is credited before the money moved"
    worker_env.gateway("gw_a", lambda r: ActionRequired("pi_2", "https://bank.example/3ds"))
    txn2, record2 = worker_env.command(account="acc-2")
    await handle(worker_env.deps, record2)
    assert worker_env.status(txn2) == "action_required"
    url = worker_env.query(
        "SELECT data->>'redirect_url' FROM outbox WHERE event_type LIKE '%%action_required%%'"
    )
    assert url == [("https://bank.example/3ds",)]


async def test_all_gateways_failing_fails_with_every_reason(worker_env: WorkerEnv) -> None:
    for name in ("gw_a", "gw_b", "gw_c"):
        worker_env.gateway(name, refused)
    txn, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "failed"
    [(code, message)] = worker_env.query(
        "SELECT failure_code, failure_message FROM transactions WHERE id = %s", txn
    )
    assert code == "all_gateways_failed"
    assert all(name in message for name in ("gw_a", "gw_b", "gw_c"))


async def test_breaker_opens_after_failures_then_recovers(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=True)
    worker_env.gateway("gw_b", ok)
    # 3 ambiguous tries on the first command trip the breaker (fail_max=3).
    _, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert str(worker_env.deps.breakers.of("gw_a").current_state) == "open"
    calls_before = len(a.calls)
    second, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert len(a.calls) == calls_before, "an open breaker sends nothing"
    assert worker_env.status(second) == "succeeded"
    codes = worker_env.query("SELECT error_code FROM attempts WHERE transaction_id = %s", second)
    assert ("breaker_open",) in codes
    # After the reset timeout one trial call goes through and closes it again.
    worker_env.gateway("gw_a", ok)
    import asyncio

    await asyncio.sleep(0.6)  # the breaker's own reset timeout (0.5 s) must pass
    third, record = worker_env.command()
    await handle(worker_env.deps, record)
    assert str(worker_env.deps.breakers.of("gw_a").current_state) == "closed"
    assert worker_env.status(third) == "succeeded"
