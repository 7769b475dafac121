"""Stripe payouts to connected accounts: the adapter's Transfers against the sandbox over
real HTTP (the official SDK on the wire), their lookups and signed `transfer.*` webhooks.

The sandbox ledger is the ground truth for "how many times did money move".
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from paystream_core.statuses import TransactionType
from paystream_gateways import (
    Ambiguous,
    CallbackEvent,
    Declined,
    Gateway,
    NotFound,
    StatusQuery,
    Succeeded,
)
from paystream_gateways.stripe_gateway import StripeGateway
from paystream_sandbox.client import SandboxAdmin
from tests.integration.gateways.conftest import Case, make_case, payment
from tests.integration.gateways.support import CallbackReceiver

pytestmark = [
    pytest.mark.integration,
    # The stripe SDK's own httpx client posts its form body with `data=`; not ours to fix.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw:DeprecationWarning"),
]

CONNECTED = "acct_1Nv0FGQ9RKHgCVdK"
TO_ACCOUNT = {"type": "stripe_account", "account": CONNECTED}
BANK = {"holder_name": "Ada Lovelace", "iban": "GB33BUKB20201555555555"}


@pytest.fixture
def stripe_case(sandbox: SandboxAdmin, receiver: CallbackReceiver) -> Case:
    made = make_case("stripe", sandbox.base_url)
    sandbox.register_account(
        "stripe",
        made.account,
        webhook_url=receiver.url + made.callback_path,
        webhook_secret=made.webhook_secret,
    )
    return made


@pytest.fixture
async def stripe_gw(stripe_case: Case) -> AsyncIterator[Gateway]:
    gw = stripe_case.gateway(read_timeout_s=5.0, connect_timeout_s=2.0)
    assert isinstance(gw, StripeGateway)
    yield gw
    await gw.aclose()


def _events(
    gateway: Gateway, receiver: CallbackReceiver, case: Case, reference: str, count: int
) -> list[CallbackEvent]:
    """The first `count` signed callbacks about `reference`, each verified then parsed."""

    def about() -> list[CallbackEvent]:
        events = []
        for received in receiver.received(case.callback_path):
            gateway.verify_callback(received.headers, received.body)
            event = gateway.parse_callback(received.body)
            if event.reference == reference:
                events.append(event)
        return events

    receiver.wait(lambda _: len(about()) >= count, path=case.callback_path)
    return about()


async def test_transfer_to_connected_account_moves_money_once(
    stripe_gw: Gateway, sandbox: SandboxAdmin
) -> None:
    request = payment(currency="GBP", country="GB", destination=TO_ACCOUNT)
    outcome = await stripe_gw.withdraw(request)

    assert isinstance(outcome, Succeeded)
    assert outcome.provider_reference.startswith("tr_")
    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    assert entry["kind"] == "withdrawal"
    assert entry["id"] == outcome.provider_reference
    assert entry["destination"] == CONNECTED
    assert (entry["amount_minor"], entry["currency"]) == (1250, "gbp")
    # Our key is what the transfer carries, for lookups and for webhooks.
    assert entry["reference"] == request.idempotency_key


async def test_same_key_replays_the_same_transfer(
    stripe_case: Case, stripe_gw: Gateway, sandbox: SandboxAdmin
) -> None:
    request = payment(currency="GBP", country="GB", destination=TO_ACCOUNT)
    first = await stripe_gw.withdraw(request)
    again = await stripe_gw.withdraw(request)
    # A second adapter (another worker after a crash) sends the same attempt again.
    other_worker = stripe_case.gateway()
    try:
        third = await other_worker.withdraw(request)
    finally:
        await other_worker.aclose()

    assert isinstance(first, Succeeded)
    assert first == again == third
    assert len(sandbox.ledger(idempotency_key=request.idempotency_key)) == 1


async def test_replay_on_the_wire_says_so(stripe_case: Case, sandbox: SandboxAdmin) -> None:
    key = f"ps-{uuid.uuid4()}-1"
    body = f"amount=700&currency=gbp&destination={CONNECTED}&transfer_group={key}"
    headers = {
        "Authorization": f"Bearer {stripe_case.account}",
        "Idempotency-Key": key,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    url = f"{sandbox.base_url}/stripe/v1/transfers"
    first = httpx.post(url, content=body, headers=headers)
    again = httpx.post(url, content=body, headers=headers)
    other = httpx.post(url, content=body.replace("700", "701"), headers=headers)

    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    assert first.json()["object"] == "transfer"
    assert first.json()["destination"] == CONNECTED
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert len(sandbox.ledger(idempotency_key=key)) == 1


async def test_status_lookup_finds_the_transfer(stripe_gw: Gateway) -> None:
    request = payment(currency="GBP", country="GB", destination=TO_ACCOUNT)
    sent = await stripe_gw.withdraw(request)
    assert isinstance(sent, Succeeded)

    by_key = await stripe_gw.status(
        StatusQuery(TransactionType.WITHDRAWAL, request.idempotency_key)
    )
    by_id = await stripe_gw.status(
        StatusQuery(TransactionType.WITHDRAWAL, request.idempotency_key, sent.provider_reference)
    )
    never = await stripe_gw.status(StatusQuery(TransactionType.WITHDRAWAL, "ps-never-sent-1"))
    wrong_id = await stripe_gw.status(
        StatusQuery(TransactionType.WITHDRAWAL, "ps-never-sent-1", "tr_doesnotexist")
    )

    assert by_key == by_id == sent
    # Listing by transfer_group is consistent (unlike search): absence is proof.
    assert never == NotFound(conclusive=True)
    assert wrong_id == NotFound(conclusive=True)


async def test_error_after_execute_is_ambiguous_and_lookup_resolves(
    stripe_gw: Gateway, sandbox: SandboxAdmin
) -> None:
    request = payment("error_after_execute", currency="GBP", country="GB", destination=TO_ACCOUNT)
    with pytest.raises(Ambiguous):
        await stripe_gw.withdraw(request)

    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    found = await stripe_gw.status(StatusQuery(TransactionType.WITHDRAWAL, request.idempotency_key))
    assert found == Succeeded(str(entry["id"]))


async def test_bank_details_are_declined_before_any_call(
    stripe_gw: Gateway, sandbox: SandboxAdmin
) -> None:
    for destination in (BANK, {"type": "bank", **BANK}):
        # The caller's metadata is readable, never a payout destination.
        request = payment(
            currency="GBP",
            country="GB",
            destination=destination,
            metadata={"stripe_account": CONNECTED},
        )
        outcome = await stripe_gw.withdraw(request)

        assert isinstance(outcome, Declined)
        assert outcome.code == "destination_unsupported"
        assert outcome.retry_elsewhere is True
        assert "connected account" in outcome.message
        assert "bank details" in outcome.message
    assert sandbox.ledger(provider="stripe") == []


async def test_provider_declines(stripe_gw: Gateway, sandbox: SandboxAdmin) -> None:
    # Our platform balance at Stripe is short: another gateway may pay.
    short = await stripe_gw.withdraw(
        payment("decline_balance_insufficient", currency="GBP", destination=TO_ACCOUNT)
    )
    # The account is not (or no longer) connected: no gateway can pay it.
    unknown = await stripe_gw.withdraw(
        payment("decline_invalid_destination", currency="GBP", destination=TO_ACCOUNT)
    )

    assert isinstance(short, Declined)
    assert short.retry_elsewhere is True
    assert short.code == "balance_insufficient"
    assert isinstance(unknown, Declined)
    assert unknown.retry_elsewhere is False
    assert unknown.code == "invalid_destination"
    assert sandbox.ledger(provider="stripe") == []


async def test_signed_webhooks_created_then_reversed(
    stripe_case: Case, stripe_gw: Gateway, sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    request = payment(currency="GBP", country="GB", destination=TO_ACCOUNT)
    sent = await stripe_gw.withdraw(request)
    assert isinstance(sent, Succeeded)

    [created] = _events(stripe_gw, receiver, stripe_case, request.idempotency_key, 1)
    assert created.event_type == "transfer.created"
    assert created.kind == TransactionType.WITHDRAWAL
    assert created.provider_reference == sent.provider_reference
    assert created.outcome == sent

    sandbox.reverse_transfer(sent.provider_reference)
    events = _events(stripe_gw, receiver, stripe_case, request.idempotency_key, 2)
    reversed_ = events[-1]
    assert reversed_.event_type == "transfer.reversed"
    assert reversed_.event_id != created.event_id
    assert isinstance(reversed_.outcome, Declined)
    assert reversed_.outcome.code == "transfer_reversed"
    assert reversed_.outcome.retry_elsewhere is False
    looked_up = await stripe_gw.status(
        StatusQuery(TransactionType.WITHDRAWAL, request.idempotency_key)
    )
    assert looked_up == reversed_.outcome
    # A reversal takes money back; it is not a second execution.
    assert len(sandbox.ledger(idempotency_key=request.idempotency_key)) == 1


@pytest.mark.parametrize("provider", ["json", "soap"])
async def test_bank_gateways_decline_connected_accounts(
    provider: str, sandbox: SandboxAdmin
) -> None:
    case = make_case(provider, sandbox.base_url)
    sandbox.register_account(provider, case.account, api_secret=case.api_secret)
    gateway = case.gateway()
    try:
        outcome = await gateway.withdraw(payment(destination=TO_ACCOUNT))
    finally:
        await gateway.aclose()

    assert isinstance(outcome, Declined)
    assert outcome.code == "destination_unsupported"
    assert outcome.retry_elsewhere is True
    assert sandbox.ledger(provider=provider) == []
