"""Contract tests: every adapter against the sandbox over real HTTP, same expectations.

Each test runs once per provider (stripe through the official SDK, JSONPay, SOAPBank).
The sandbox ledger is the ground truth for "how many times did money move".
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from paystream_core.statuses import TransactionType
from paystream_gateways import (
    ActionRequired,
    Ambiguous,
    AmbiguousReason,
    CallbackEvent,
    CallbackRejected,
    Declined,
    Gateway,
    NotExecuted,
    NotExecutedReason,
    NotFound,
    Pending,
    StatusQuery,
    Succeeded,
)
from paystream_sandbox.client import SandboxAdmin
from tests.integration.gateways.conftest import Case, payment
from tests.integration.gateways.support import CallbackReceiver, Received, refusing_port

pytestmark = [
    pytest.mark.integration,
    # The stripe SDK's own httpx client posts its form body with `data=`; not ours to fix.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw:DeprecationWarning"),
]


def _events(gateway: Gateway, received: list[Received], reference: str) -> list[CallbackEvent]:
    """Verify every callback's signature, then keep the ones about `reference`."""
    events = []
    for r in received:
        gateway.verify_callback(r.headers, r.body)
        event = gateway.parse_callback(r.body)
        if event.reference == reference:
            events.append(event)
    return events


def _wait_events(
    gateway: Gateway,
    receiver: CallbackReceiver,
    case: Case,
    reference: str,
    done: type,
) -> list[CallbackEvent]:
    """Callbacks about `reference` until one carries an outcome of type `done`."""
    received = receiver.wait(
        lambda got: any(isinstance(e.outcome, done) for e in _events(gateway, got, reference)),
        path=case.callback_path,
    )
    return _events(gateway, received, reference)


async def test_deposit_succeeds_once(
    case: Case, gateway: Gateway, sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    request = payment()
    outcome = await gateway.deposit(request)

    assert isinstance(outcome, Succeeded)
    ledger = sandbox.ledger(idempotency_key=request.idempotency_key)
    assert [(e["id"], e["status"], e["amount_minor"]) for e in ledger] == [
        (outcome.provider_reference, "succeeded", 1250)
    ]
    events = _wait_events(gateway, receiver, case, request.idempotency_key, Succeeded)
    assert events[-1].provider_reference == outcome.provider_reference
    assert events[-1].kind == TransactionType.DEPOSIT


async def test_withdrawal_succeeds(case: Case, gateway: Gateway, sandbox: SandboxAdmin) -> None:
    request = payment()
    outcome = await gateway.withdraw(request)

    assert isinstance(outcome, Succeeded)
    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    assert entry["kind"] == "withdrawal"
    assert entry["id"] == outcome.provider_reference


async def test_hard_decline_is_final(case: Case, gateway: Gateway, sandbox: SandboxAdmin) -> None:
    request = payment("decline_insufficient_funds")
    outcome = await gateway.deposit(request)

    assert isinstance(outcome, Declined)
    assert outcome.code == "insufficient_funds"
    assert outcome.retry_elsewhere is False
    assert len(sandbox.ledger(idempotency_key=request.idempotency_key)) == 1


async def test_soft_decline_may_go_elsewhere(case: Case, gateway: Gateway) -> None:
    outcome = await gateway.deposit(payment("decline_processing_error"))

    assert isinstance(outcome, Declined)
    assert outcome.code == "processing_error"
    assert outcome.retry_elsewhere is True


async def test_pending_then_signed_callback(
    case: Case, gateway: Gateway, receiver: CallbackReceiver
) -> None:
    request = payment("pending")
    outcome = await gateway.deposit(request)
    assert isinstance(outcome, Pending)

    events = _wait_events(gateway, receiver, case, request.idempotency_key, Succeeded)

    assert [type(e.outcome) for e in events] == [Pending, Succeeded]
    assert {e.provider_reference for e in events} == {outcome.provider_reference}
    assert len({e.event_id for e in events}) == 2
    settled = await gateway.status(
        StatusQuery(TransactionType.DEPOSIT, request.idempotency_key, outcome.provider_reference)
    )
    assert settled == Succeeded(outcome.provider_reference)


async def test_pending_then_failed_callback(
    case: Case, gateway: Gateway, receiver: CallbackReceiver
) -> None:
    request = payment("pending_fail")
    assert isinstance(await gateway.deposit(request), Pending)

    events = _wait_events(gateway, receiver, case, request.idempotency_key, Declined)

    final = events[-1].outcome
    assert isinstance(final, Declined)
    assert final.code == "insufficient_funds"


async def test_action_required_then_completed(
    case: Case, gateway: Gateway, receiver: CallbackReceiver
) -> None:
    request = payment("action_required")
    outcome = await gateway.deposit(request)
    assert isinstance(outcome, ActionRequired)
    assert outcome.redirect_url.startswith("http")

    # The customer follows the redirect and passes the challenge.
    async with httpx.AsyncClient() as customer:
        assert (await customer.get(outcome.redirect_url)).status_code == 200

    events = _wait_events(gateway, receiver, case, request.idempotency_key, Succeeded)
    assert isinstance(events[0].outcome, ActionRequired)
    assert events[-1].outcome == Succeeded(outcome.provider_reference)


async def test_timeout_after_execute_is_ambiguous_and_retry_executes_once(
    case: Case, sandbox: SandboxAdmin
) -> None:
    gateway = case.gateway(read_timeout_s=0.5)
    request = payment("timeout")
    try:
        with pytest.raises(Ambiguous) as caught:
            await gateway.deposit(request)
        assert caught.value.reason == AmbiguousReason.TIMEOUT
        # It did execute: this is exactly why a timeout must not fall back.
        assert len(sandbox.ledger(idempotency_key=request.idempotency_key)) == 1

        retried = await gateway.deposit(request)  # same key: the stored answer comes back
    finally:
        await gateway.aclose()

    assert isinstance(retried, Succeeded)
    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    assert entry["id"] == retried.provider_reference


async def test_connection_refused_is_not_executed(case: Case) -> None:
    with refusing_port() as port:
        dead = f"http://127.0.0.1:{port}"
        url_field = {"stripe": "api_base", "json": "base_url", "soap": "endpoint_url"}
        gateway = case.with_credentials(**{url_field[case.provider]: dead}).gateway()
        try:
            with pytest.raises(NotExecuted) as caught:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert caught.value.reason == NotExecutedReason.CONNECT_FAILED


async def test_same_key_across_retries_executes_once(
    case: Case, gateway: Gateway, sandbox: SandboxAdmin
) -> None:
    request = payment()
    outcomes = [await gateway.deposit(request) for _ in range(3)]

    assert len(set(outcomes)) == 1
    assert isinstance(outcomes[0], Succeeded)
    assert len(sandbox.ledger(idempotency_key=request.idempotency_key)) == 1


async def test_same_key_other_params_is_ambiguous(case: Case, gateway: Gateway) -> None:
    first = payment()
    await gateway.deposit(first)
    changed = dataclasses.replace(first, amount_minor=999)

    with pytest.raises(Ambiguous) as caught:
        await gateway.deposit(changed)
    assert caught.value.reason == AmbiguousReason.IDEMPOTENCY_CONFLICT


async def test_status_lookup_by_our_reference(
    case: Case, gateway: Gateway, sandbox: SandboxAdmin
) -> None:
    deposit, withdrawal = payment(), payment()
    paid = await gateway.deposit(deposit)
    sent = await gateway.withdraw(withdrawal)

    by_key = await gateway.status(StatusQuery(TransactionType.DEPOSIT, deposit.idempotency_key))
    by_id = await gateway.status(
        StatusQuery(TransactionType.DEPOSIT, deposit.idempotency_key, paid.provider_reference)
    )
    payout = await gateway.status(
        StatusQuery(TransactionType.WITHDRAWAL, withdrawal.idempotency_key)
    )
    missing = await gateway.status(StatusQuery(TransactionType.WITHDRAWAL, "ps-never-sent-1"))

    assert by_key == by_id == paid
    assert payout == sent
    assert missing == NotFound(conclusive=True)


async def test_unknown_deposit_lookup(case: Case, gateway: Gateway) -> None:
    found = await gateway.status(StatusQuery(TransactionType.DEPOSIT, "ps-never-sent-1"))
    # Stripe search is eventually consistent: its absence proves nothing yet.
    assert found == NotFound(conclusive=case.provider != "stripe")


async def test_error_after_execute_is_ambiguous_and_lookup_resolves(
    case: Case, gateway: Gateway, sandbox: SandboxAdmin
) -> None:
    request = payment("error_after_execute")
    with pytest.raises(Ambiguous) as caught:
        await gateway.deposit(request)
    assert caught.value.reason == AmbiguousReason.SERVER_ERROR

    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    resolved = await gateway.status(StatusQuery(TransactionType.DEPOSIT, request.idempotency_key))
    assert resolved == Succeeded(str(entry["id"]))


async def test_provider_down(case: Case, gateway: Gateway, sandbox: SandboxAdmin) -> None:
    sandbox.set_faults(case.provider, down=True)
    request = payment()
    error: type[Exception] = Ambiguous if case.provider == "stripe" else NotExecuted
    with pytest.raises(error) as caught:
        await gateway.deposit(request)
    # JSONPay and SOAPBank document their "unavailable" answer as not processed; Stripe
    # makes no such promise for a 503, so it stays ambiguous.
    expected = (
        AmbiguousReason.SERVER_ERROR if case.provider == "stripe" else NotExecutedReason.UNAVAILABLE
    )
    assert caught.value.reason == expected  # type: ignore[attr-defined]
    assert sandbox.ledger(idempotency_key=request.idempotency_key) == []


async def test_wrong_credentials_are_not_executed(case: Case, sandbox: SandboxAdmin) -> None:
    field = "api_key" if case.provider == "stripe" else "api_secret"
    bad = case.with_credentials(**{field: "rk_live_wrong" if case.provider == "stripe" else "x"})
    gateway = bad.gateway()
    try:
        with pytest.raises(NotExecuted) as caught:
            await gateway.deposit(payment())
    finally:
        await gateway.aclose()
    assert caught.value.reason == NotExecutedReason.UNAUTHORIZED
    assert sandbox.ledger(provider=case.provider) == []


async def test_tampered_or_stale_callbacks_are_rejected(
    case: Case, gateway: Gateway, receiver: CallbackReceiver
) -> None:
    request = payment()
    await gateway.deposit(request)
    [first, *_] = receiver.wait(bool, path=case.callback_path)

    gateway.verify_callback(first.headers, first.body)
    with pytest.raises(CallbackRejected) as tampered:
        gateway.verify_callback(first.headers, first.body.replace(b"1250", b"9250"))
    assert tampered.value.reason == "signature"
    with pytest.raises(CallbackRejected) as unsigned:
        gateway.verify_callback({}, first.body)
    assert unsigned.value.reason == "signature"
    with pytest.raises(CallbackRejected) as stale:
        gateway.verify_callback(first.headers, first.body, now=first_time(first) + 3600)
    assert stale.value.reason == "stale"
    other = case.with_credentials(webhook_secret="whsec_other").gateway()
    try:
        with pytest.raises(CallbackRejected):
            other.verify_callback(first.headers, first.body)
    finally:
        await other.aclose()


async def test_duplicate_and_out_of_order_callbacks(
    case: Case, gateway: Gateway, sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    sandbox.set_faults(case.provider, duplicate_callbacks=True, out_of_order_callbacks=True)
    request = payment("pending")
    await gateway.deposit(request)

    received = receiver.wait(
        lambda got: len(_events(gateway, got, request.idempotency_key)) == 4,
        path=case.callback_path,
    )
    events = _events(gateway, received, request.idempotency_key)

    # Final first, each twice with the same event id, then the stale "pending" twice.
    assert [type(e.outcome) for e in events] == [Succeeded, Succeeded, Pending, Pending]
    assert events[0].event_id == events[1].event_id
    assert events[2].event_id == events[3].event_id != events[0].event_id


def first_time(received: Received) -> int:
    header = next(v for k, v in received.headers.items() if k.lower().endswith("signature"))
    return int(next(p[2:] for p in header.split(",") if p.startswith("t=")))
