"""The gateway worker's handler on the in-memory store, with scripted gateways.

The same rules as tests/integration/worker (design.md §3-§4), without PostgreSQL or Kafka:
intake, fallback, holds, dead letters, batches and crash resumption.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import pytest

from paystream_core.ports import AttemptKey
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_gateways.errors import Ambiguous, AmbiguousReason
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
from paystream_provider_reports.apply import Incoming, Source, apply_reports
from paystream_provider_reports.metrics import CallbackMetrics
from paystream_streams.records import RawRecord
from tests.support.scripted_gateways import ScriptedGateway, ok, refused, timeout
from tests.unit.services.worker_env import DESTINATION, Env


class ProcessKilled(BaseException):
    """A kill -9 mid-call, as the test sees it: nothing in the worker handles it (an
    ordinary exception from a call is an ambiguous answer, not a crash)."""


def attempts(env: Env, txn: uuid.UUID) -> list[tuple[int, str, str, str | None]]:
    return [
        (a.seq, a.gateway_code, a.status.value, a.error_code) for a in env.store.attempts_of(txn)
    ]


# --- fallback rules (tests/integration/worker/test_fallback_rules.py) -------------------------


async def test_priority_one_gateway_succeeds_and_credits(env: Env) -> None:
    a = env.gateway("gw_a", ok)
    txn, record = env.command(amount_minor=2500)
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert a.calls == [f"ps-{txn}-1"]
    assert env.balance() == (2500, 0)
    assert env.store.ledger_sum(txn) == 0
    # Redelivery of the same command: no new call, no new event.
    await env.run(record)
    assert a.calls == [f"ps-{txn}-1"]
    assert len(env.store.outcomes(txn)) == 2


async def test_not_executed_falls_back_to_the_next_priority(env: Env) -> None:
    a = env.gateway("gw_a", refused)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert len(a.calls) == 1, "not-executed errors are not retried on the same gateway"
    assert b.calls == [f"ps-{txn}-2"]
    assert attempts(env, txn) == [
        (1, "gw_a", "not_executed", "connect_failed"),
        (2, "gw_b", "succeeded", None),
    ]


async def test_soft_decline_falls_back_hard_decline_fails(env: Env) -> None:
    env.gateway("gw_a", lambda r: Declined("do_not_honor", "try another", True))
    env.gateway("gw_b", lambda r: Declined("Insufficient Funds", "no money", False, "pi_b"))
    c = env.gateway("gw_c", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.FAILED
    assert c.calls == [], "a hard decline must not fall back"
    stored = env.store.transaction(txn)
    assert (stored.failure_code, stored.failure_message) == ("insufficient_funds", "no money")
    assert (stored.gateway_code, stored.provider_reference) == ("gw_b", "pi_b")
    assert env.store.outcomes(txn)[-1] == ("failed", 3)
    assert env.balance() == (0, 0)


async def test_a_soft_declined_attempt_keeps_the_provider_reference(env: Env) -> None:
    env.gateway("gw_a", lambda r: Declined("do_not_honor", "try another", True, "pi_soft"))
    env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.attempts_of(txn)[0].provider_reference == "pi_soft"


async def test_ambiguous_never_falls_back_and_ends_unknown(env: Env) -> None:
    a = env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=False)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.UNKNOWN
    assert b.calls == [], "never a second gateway while the first may have executed"
    assert a.calls == [f"ps-{txn}-1"] * 3, "retried with the same idempotency key"
    assert env.store.outcomes(txn)[-1] == ("unknown", 3)
    assert attempts(env, txn) == [(1, "gw_a", "ambiguous", "timeout")]


async def test_ambiguous_resolved_by_lookup(env: Env) -> None:
    a = env.gateway("gw_a", timeout)
    a.lookup = lambda q: Succeeded(f"found-{q.idempotency_key}")
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.transaction(txn).provider_reference == f"found-ps-{txn}-1"
    assert env.balance() == (1000, 0)


async def test_ambiguous_then_proven_absent_falls_back(env: Env) -> None:
    a = env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=True)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert b.calls == [f"ps-{txn}-2"]
    assert attempts(env, txn)[0] == (1, "gw_a", "not_executed", "absent_at_provider")


async def test_a_failed_lookup_keeps_the_transaction_unknown(env: Env) -> None:
    a = env.gateway("gw_a", timeout)

    def broken(query: StatusQuery) -> StatusResult:
        raise Ambiguous("gw", AmbiguousReason.SERVER_ERROR, "lookup failed")

    a.lookup = broken
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.UNKNOWN
    assert b.calls == []


async def test_pending_and_action_required_wait_for_callbacks(env: Env) -> None:
    env.gateway("gw_a", lambda r: Pending("pi_1"))
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.PENDING
    assert env.balance() == (0, 0), "nothing is credited before the money moved"
    env.gateway("gw_a", lambda r: ActionRequired("pi_2", "https://bank.example/3ds"))
    txn2, record2 = env.command(account="acc-2")
    await env.run(record2)
    assert env.store.status(txn2) == Status.ACTION_REQUIRED
    urls = [e.data.get("redirect_url") for e in env.store.state.outbox]
    assert [u for u in urls if u] == ["https://bank.example/3ds"]
    assert attempts(env, txn2) == [(1, "gw_a", "action_required", None)]


async def test_all_gateways_failing_fails_with_every_reason(env: Env) -> None:
    for name in ("gw_a", "gw_b", "gw_c"):
        env.gateway(name, refused)
    txn, record = env.command()
    await env.run(record)
    stored = env.store.transaction(txn)
    assert stored.status == Status.FAILED
    assert stored.failure_code == "all_gateways_failed"
    assert stored.failure_message is not None
    assert all(name in stored.failure_message for name in ("gw_a", "gw_b", "gw_c"))
    assert env.store.outcomes(txn) == [("processing", 2), ("failed", 3)]


async def test_breaker_opens_after_failures_then_recovers(env: Env) -> None:
    a = env.gateway("gw_a", timeout)
    a.lookup = lambda q: NotFound(conclusive=True)
    env.gateway("gw_b", ok)
    _, record = env.command()
    await env.run(record)  # 3 ambiguous tries trip the breaker (fail_max=3)
    assert str(env.deps.breakers.of("gw_a").current_state) == "open"
    calls_before = len(a.calls)
    second, record = env.command()
    await env.run(record)
    assert len(a.calls) == calls_before, "an open breaker sends nothing"
    assert env.store.status(second) == Status.SUCCEEDED
    assert attempts(env, second)[0] == (1, "gw_a", "not_executed", "breaker_open")
    env.gateway("gw_a", ok)
    await asyncio.sleep(1.05)  # the breaker's reset timeout (1 s) must pass
    third, record = env.command()
    await env.run(record)
    assert str(env.deps.breakers.of("gw_a").current_state) == "closed"
    assert env.store.transaction(third).gateway_code == "gw_a"


async def test_a_gateway_taken_down_is_not_routed(env: Env) -> None:
    env.store.set_gateway_enabled("gw_a", False)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert b.calls == [f"ps-{txn}-1"]


# --- intake (tests/integration/worker/test_intake.py) -----------------------------------------


async def fund(env: Env, amount_minor: int, account: str = "acc-1") -> None:
    previous = env.gateways["gw_a"].script
    env.gateway("gw_a", ok)
    _, deposit = env.command(amount_minor=amount_minor, account=account)
    await env.run(deposit)
    env.gateway("gw_a", previous)


async def test_withdrawal_holds_then_settles(env: Env) -> None:
    await fund(env, 5000)
    a = env.gateway("gw_a", ok)
    txn, withdrawal = env.command("withdrawal", amount_minor=1200)
    await env.run(withdrawal)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.balance() == (3800, 0)
    assert env.store.ledger_sum(txn) == 0, "double entry: a transaction's legs sum to zero"
    assert a.requests[-1].destination == DESTINATION, "the payout details, opened for the call"


async def test_withdrawal_failure_releases_the_hold(env: Env) -> None:
    await fund(env, 5000)
    env.gateway("gw_a", lambda r: Declined("invalid_account", "bad destination", False))
    txn, withdrawal = env.command("withdrawal", amount_minor=1200)
    await env.run(withdrawal)
    assert env.store.status(txn) == Status.FAILED
    assert env.balance() == (5000, 0)
    assert env.store.ledger_sum(txn) == 0


async def test_a_pending_withdrawal_keeps_its_hold(env: Env) -> None:
    await fund(env, 5000)
    env.gateway("gw_a", lambda r: Pending("po_1"))
    txn, withdrawal = env.command("withdrawal", amount_minor=1200)
    await env.run(withdrawal)
    assert env.store.status(txn) == Status.PENDING
    assert env.balance() == (3800, 1200)


async def test_a_withdrawal_no_gateway_would_take_releases_its_hold(env: Env) -> None:
    await fund(env, 5000)
    for name in ("gw_a", "gw_b", "gw_c"):
        env.gateway(name, refused)
    txn, withdrawal = env.command("withdrawal", amount_minor=1200)
    await env.run(withdrawal)
    assert env.store.transaction(txn).failure_code == "all_gateways_failed"
    assert env.balance() == (5000, 0)
    assert env.store.ledger_sum(txn) == 0


async def test_insufficient_funds_rejected_without_a_call(env: Env) -> None:
    a = env.gateway("gw_a", ok)
    txn, withdrawal = env.command("withdrawal", amount_minor=1)
    await env.run(withdrawal)
    assert env.store.status(txn) == Status.REJECTED
    assert a.calls == []
    assert env.store.transaction(txn).failure_code == "insufficient_funds"
    assert env.store.outcomes(txn) == [("rejected", 2)]
    assert env.balance() == (0, 0)
    assert env.store.ledger_sum(txn) == 0


async def test_no_gateway_for_the_country_is_rejected(env: Env) -> None:
    txn, record = env.command(country="JP")
    await env.run(record)
    assert env.store.status(txn) == Status.REJECTED
    assert env.store.transaction(txn).failure_code == "no_gateway_available"
    assert env.store.outcomes(txn) == [("rejected", 2)]


async def test_same_key_other_payload_is_a_dead_letter(env: Env) -> None:
    env.gateway("gw_a", ok)
    txn, first = env.command(key="same", amount_minor=100)
    _, second = env.command(key="same", amount_minor=999)
    await env.run(first)
    await env.run(second)
    assert env.store.transaction(txn).amount_minor == 100
    [(record, reason)] = env.dead.records
    assert record is second
    assert reason.startswith("idempotency_conflict")
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]


async def test_redelivery_resumes_without_a_second_call(env: Env) -> None:
    a = env.gateway("gw_a", lambda r: Pending("pi_1"))
    txn, record = env.command()
    await env.run(record)
    await env.run(record)
    assert a.calls == [f"ps-{txn}-1"]
    assert env.store.outcomes(txn) == [("processing", 2), ("pending", 3)]
    assert env.dead.records == []


async def test_poison_records_and_unknown_tenants_are_dead_letters(env: Env) -> None:
    env.gateway("gw_a", ok)
    _, good = env.command()
    outcome_type = b"paystream.transaction.succeeded.v1"
    succeeded = [(k, outcome_type if k == "ce_type" else v) for k, v in good.headers]
    poisons = [
        RawRecord("commands", 0, 100, b"k", b"not json", good.headers),
        RawRecord(
            "commands", 0, 101, b"k", b"{}", [("ce_type", b"paystream.deposit.requested.v1")]
        ),
        RawRecord("commands", 0, 102, good.key, good.value, succeeded),
    ]
    _, unknown_tenant = env.command(tenant=uuid.uuid4())
    for record in [*poisons, unknown_tenant]:
        await env.run(record)
    assert env.dead.reasons == ["invalid_event"] * 3 + ["unknown_tenant"]
    assert [r.offset for r, _ in env.dead.records] == [100, 101, 102, unknown_tenant.offset]
    assert env.store.state.transactions == {}
    await env.run(good)  # the partition keeps moving
    assert len(env.store.state.transactions) == 1


async def test_a_started_attempt_is_redone_with_the_same_key(env: Env) -> None:
    """A crash after recording the attempt and before recording its result."""

    def crash(request: PaymentRequest) -> Outcome:
        raise ProcessKilled("process killed mid-call")

    a = env.gateway("gw_a", crash)
    txn, record = env.command()
    with pytest.raises(ProcessKilled):
        await env.run(record)
    assert attempts(env, txn) == [(1, "gw_a", "started", None)]
    assert env.store.status(txn) == Status.PROCESSING
    env.gateway("gw_a", ok)
    await env.run(record)  # the redelivery
    assert env.store.status(txn) == Status.SUCCEEDED
    assert a.calls == [f"ps-{txn}-1"] * 2, "same attempt, same idempotency key"
    assert attempts(env, txn) == [(1, "gw_a", "succeeded", None)]
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]


async def _crashed_mid_call(env: Env) -> tuple[uuid.UUID, RawRecord]:
    """A command whose attempt 1 at gw_a was started and never finished."""

    def crash(request: PaymentRequest) -> Outcome:
        raise ProcessKilled("process killed mid-call")

    env.gateway("gw_a", crash)
    txn, record = env.command()
    with pytest.raises(ProcessKilled):
        await env.run(record)
    assert attempts(env, txn) == [(1, "gw_a", "started", None)]
    return txn, record


async def test_a_redo_refused_is_looked_up_not_a_fallback(env: Env) -> None:
    """The first call may have executed: a redo refused before it ran proves nothing, so
    the key is looked up, and the payment it finds stands (no second gateway is paid)."""
    txn, record = await _crashed_mid_call(env)
    a = env.gateway("gw_a", refused)
    a.lookup = lambda q: Succeeded(f"ref-{q.idempotency_key}")
    b = env.gateway("gw_b", ok)
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert b.calls == []
    assert attempts(env, txn) == [(1, "gw_a", "succeeded", None)]
    assert env.balance() == (1000, 0)


async def test_a_redo_refused_and_proven_absent_falls_back(env: Env) -> None:
    txn, record = await _crashed_mid_call(env)
    a = env.gateway("gw_a", refused)
    a.lookup = lambda q: NotFound(conclusive=True)
    b = env.gateway("gw_b", ok)
    await env.run(record)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert b.calls == [f"ps-{txn}-2"]
    assert [s for _, _, s, _ in attempts(env, txn)] == ["not_executed", "succeeded"]


async def test_a_redo_refused_without_an_answer_is_unknown(env: Env) -> None:
    """No proof either way: `unknown` (the reconciler's lookups take over), never a second
    gateway while the first call may have moved the money."""
    txn, record = await _crashed_mid_call(env)
    a = env.gateway("gw_a", refused)
    a.lookup = lambda q: NotFound(conclusive=False)
    b = env.gateway("gw_b", ok)
    await env.run(record)
    assert env.store.status(txn) == Status.UNKNOWN
    assert b.calls == []
    assert attempts(env, txn) == [(1, "gw_a", "ambiguous", "redo_connect_failed")]


async def test_a_retry_refused_after_a_timeout_is_looked_up_not_a_fallback(env: Env) -> None:
    """The first try may have executed at gw_a; its retry refused (e.g. by a breaker that
    other calls opened) proves nothing: no second gateway is paid on that alone."""
    answers = [timeout, refused, refused]

    def first_times_out(request: PaymentRequest) -> Outcome:
        return answers.pop(0)(request)

    a = env.gateway("gw_a", first_times_out)
    a.lookup = lambda q: NotFound(conclusive=False)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert b.calls == []
    assert env.store.status(txn) == Status.UNKNOWN
    assert attempts(env, txn) == [(1, "gw_a", "ambiguous", "timeout")]


# --- batches -------------------------------------------------------------------------------


async def test_two_withdrawals_of_one_account_in_one_batch_hold_in_order(env: Env) -> None:
    await fund(env, 1500)
    a = env.gateway("gw_a", lambda r: Pending(f"po-{r.idempotency_key}"))
    a.calls.clear()
    first, r1 = env.command("withdrawal", amount_minor=1000)
    second, r2 = env.command("withdrawal", amount_minor=1000)
    await env.run(r1, r2)
    assert env.store.status(first) == Status.PENDING
    assert env.store.status(second) == Status.REJECTED
    assert env.store.transaction(second).failure_code == "insufficient_funds"
    assert a.calls == [f"ps-{first}-1"]
    assert env.balance() == (500, 1000)
    # The other order of the same amounts: the first in offset order wins.
    await fund(env, 1000, account="acc-2")
    third, r3 = env.command("withdrawal", amount_minor=400, account="acc-2")
    fourth, r4 = env.command("withdrawal", amount_minor=700, account="acc-2")
    await env.run(r3, r4)
    assert (env.store.status(third), env.store.status(fourth)) == (Status.PENDING, Status.REJECTED)
    assert env.balance("acc-2") == (600, 400)


async def test_a_batch_of_100_with_a_poison_record_and_a_conflict(env: Env) -> None:
    a = env.gateway("gw_a", ok)
    good = [env.command(account=f"acc-{i % 7}") for i in range(98)]
    poison = RawRecord("commands", 0, 999, b"k", b"not json", good[0][1].headers)
    _, conflict = env.command(key=_key_of(good[10][1]), account="acc-3", amount_minor=5)
    batch = [r for _, r in good[:50]] + [poison] + [r for _, r in good[50:]] + [conflict]
    assert len(batch) == 100
    await env.run(*batch)
    assert env.dead.reasons == ["invalid_event", "idempotency_conflict"]
    assert sorted(a.calls) == sorted(f"ps-{txn}-1" for txn, _ in good)
    for txn, _ in good:
        assert env.store.status(txn) == Status.SUCCEEDED
        assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert env.store.transaction(good[10][0]).amount_minor == 1000, "the first stored wins"
    assert sum(env.balance(f"acc-{i}")[0] for i in range(7)) == 98 * 1000

    # The whole batch delivered again: no second call, no second outcome event.
    outbox = list(env.store.state.outbox)
    await env.run(*batch)
    assert len(a.calls) == 98
    assert env.store.state.outbox == outbox
    assert env.dead.reasons == ["invalid_event", "idempotency_conflict"] * 2


def _key_of(record: RawRecord) -> str:
    assert record.value is not None
    key: str = json.loads(record.value)["idempotency_key"]
    return key


async def test_the_same_command_twice_in_one_batch_runs_once(env: Env) -> None:
    a = env.gateway("gw_a", ok)
    txn, record = env.command()
    again = dataclasses.replace(record, offset=record.offset + 1)
    await env.run(record, again)
    assert a.calls == [f"ps-{txn}-1"]
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert env.dead.records == []


async def test_attempts_are_recorded_before_the_call(env: Env) -> None:
    seen: list[AttemptStatus] = []

    def look(request: PaymentRequest) -> Outcome:
        [attempt] = env.store.attempts_of(request.transaction_id)
        seen.append(attempt.status)
        return Succeeded("pi")

    env.gateway("gw_a", look)
    _, record = env.command()
    await env.run(record)
    assert seen == [AttemptStatus.STARTED], "committed as started before the provider is called"


# --- a callback racing the provider's answer (no lock is held during the call) -----------------


def callback_meanwhile(env: Env, gateway: str, outcome: Outcome) -> ScriptedGateway:
    """While `gateway`'s call is in flight, the callback worker applies `outcome` to the
    attempt (echoing our key), exactly as its handler would."""
    connection = env.connections[gateway]

    async def report(request: PaymentRequest) -> None:
        key = AttemptKey(connection, request.idempotency_key, None)
        source = Source("/paystream/callback-worker", "callback")
        async with env.store.unit(env.tenant) as unit:
            incoming = Incoming(key, outcome, TransactionType.DEPOSIT, "evt_race")
            [result] = await apply_reports(unit, CallbackMetrics(), source, [incoming])
            assert result is not None

    env.gateways[gateway].meanwhile = report
    return env.gateways[gateway]


async def test_a_pending_callback_before_the_answer_then_success(env: Env) -> None:
    callback_meanwhile(env, "gw_a", Pending("pi_1"))
    env.gateway("gw_a", lambda r: Succeeded("pi_1"))
    txn, record = env.command()
    await env.run(record)
    assert env.store.outcomes(txn) == [("processing", 2), ("pending", 3), ("succeeded", 4)]
    assert env.balance() == (1000, 0), "credited once"


async def test_a_success_callback_before_the_same_answer_moves_once(env: Env) -> None:
    callback_meanwhile(env, "gw_a", Succeeded("pi_1"))
    env.gateway("gw_a", lambda r: Succeeded("pi_1"))
    txn, record = env.command()
    await env.run(record)
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert env.balance() == (1000, 0)
    assert env.store.anomalies() == []


async def test_a_decline_callback_before_a_refusal_does_not_fall_back(env: Env) -> None:
    callback_meanwhile(env, "gw_a", Declined("do_not_honor", "no", False, "pi_1"))
    env.gateway("gw_a", refused)
    b = env.gateway("gw_b", ok)
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.FAILED
    assert b.calls == [], "a settled transaction is never tried elsewhere"


async def test_an_answer_contradicting_a_callback_is_an_anomaly(env: Env) -> None:
    callback_meanwhile(env, "gw_a", Declined("do_not_honor", "no", False, "pi_1"))
    env.gateway("gw_a", lambda r: Succeeded("pi_1"))
    txn, record = env.command()
    await env.run(record)
    assert env.store.status(txn) == Status.FAILED
    assert [a.kind for a in env.store.anomalies(txn)] == ["contradiction"]


async def test_a_call_that_raises_unexpectedly_is_ambiguous_and_spares_its_batch(
    env: Env,
) -> None:
    """A bug in one call (here in the adapter, after the request went out) must not fail
    the batch while the other calls are in flight: their batch's one-by-one retry would redo
    them concurrently with themselves. The broken one may have executed: unknown, no
    fallback."""
    release = asyncio.Event()
    broken_key: list[str] = []

    async def meanwhile(request: PaymentRequest) -> None:
        if request.idempotency_key in broken_key:
            raise KeyError("provider answer without 'status'")
        await release.wait()  # the healthy call is still in flight when the other breaks

    def script(request: PaymentRequest) -> Outcome:
        return Succeeded(f"ref-{request.idempotency_key}")

    a = env.gateway("gw_a", script)
    a.meanwhile = meanwhile
    b = env.gateway("gw_b", ok)
    broken, broken_record = env.command(account="acc-1")
    healthy, healthy_record = env.command(account="acc-2")
    broken_key.append(f"ps-{broken}-1")
    asyncio.get_running_loop().call_later(0.05, release.set)
    await env.run(broken_record, healthy_record)

    assert env.store.status(healthy) == Status.SUCCEEDED
    assert a.calls.count(f"ps-{healthy}-1") == 1, "the healthy call was made once"
    assert env.store.status(broken) == Status.UNKNOWN
    assert attempts(env, broken) == [(1, "gw_a", "ambiguous", "internal_error")]
    assert b.calls == [], "no second gateway while the first call may have executed"
