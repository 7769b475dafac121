"""The sandbox itself: Stripe's wire behaviour as the official SDK sees it, the admin API
and fault controls, hostile requests."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import stripe

from paystream_gateways import Ambiguous, Declined, NotExecuted, Pending
from paystream_sandbox.client import SandboxAdmin
from tests.integration.gateways.conftest import make_case, payment
from tests.integration.gateways.support import CallbackReceiver
from tests.support.polling import wait_for

pytestmark = [
    pytest.mark.integration,
    # The stripe SDK's own httpx client posts its form body with `data=`; not ours to fix.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw:DeprecationWarning"),
]


def _stripe(base_url: str, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        base_addresses={"api": f"{base_url}/stripe"},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        max_network_retries=0,
    )


def _form_post(base_url: str, key: str, idem: str, body: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/stripe/v1/payment_intents",
        content=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Idempotency-Key": idem,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def test_stripe_idempotency_on_the_wire(sandbox: SandboxAdmin) -> None:
    key, idem = f"sk_test_{uuid.uuid4().hex}", f"k-{uuid.uuid4()}"
    body = "amount=500&currency=eur&confirm=true&payment_method=pm_card_visa&metadata[a]=1"

    first = _form_post(sandbox.base_url, key, idem, body)
    again = _form_post(sandbox.base_url, key, idem, body)
    other = _form_post(sandbox.base_url, key, idem, body.replace("500", "501"))

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert first.json()["object"] == "payment_intent"
    assert first.json()["metadata"] == {"a": "1"}
    assert len(sandbox.ledger(idempotency_key=idem)) == 1


def test_official_sdk_sees_stripe_errors(sandbox: SandboxAdmin) -> None:
    key = f"sk_test_{uuid.uuid4().hex}"
    client = _stripe(sandbox.base_url, key)

    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(
            {
                "amount": 700,
                "currency": "usd",
                "confirm": True,
                "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
            },
            {"idempotency_key": f"k-{uuid.uuid4()}"},
        )
    assert declined.value.http_status == 402
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "insufficient_funds"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_missing")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as invalid:
        client.v1.payment_intents.create({"amount": 0, "currency": "usd"})
    assert invalid.value.param == "amount"
    with pytest.raises(stripe.AuthenticationError):
        _stripe(sandbox.base_url, "sk_live_nope").v1.payment_intents.retrieve("pi_x")
    idem = f"k-{uuid.uuid4()}"
    client.v1.transfers.create(
        {"amount": 1, "currency": "usd", "destination": "acct_1"}, {"idempotency_key": idem}
    )
    with pytest.raises(stripe.IdempotencyError):
        client.v1.transfers.create(
            {"amount": 2, "currency": "usd", "destination": "acct_1"}, {"idempotency_key": idem}
        )


def test_stripe_webhook_passes_the_sdks_own_verification(
    sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    key, secret = f"sk_test_{uuid.uuid4().hex}", f"whsec_{uuid.uuid4().hex}"
    sandbox.register_account(
        "stripe", key, webhook_url=receiver.url + "/sdk", webhook_secret=secret
    )
    created = _stripe(sandbox.base_url, key).v1.payment_intents.create(
        {"amount": 300, "currency": "eur", "confirm": True, "payment_method": "pm_card_visa"}
    )

    [hook] = receiver.wait(bool, path="/sdk")
    event = stripe.Webhook.construct_event(hook.body, hook.headers["Stripe-Signature"], secret)

    assert event.type == "payment_intent.succeeded"
    assert event.data.object["id"] == created.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(hook.body, hook.headers["Stripe-Signature"], "whsec_x")


def test_admin_never_returns_secrets(sandbox: SandboxAdmin) -> None:
    sandbox.register_account(
        "json", "m-1", api_secret="api-secret-value", webhook_secret="hook-secret-value"
    )
    sandbox.register_account("stripe", "sk_test_0123456789abcdef", webhook_secret="whsec_value")

    listed = httpx.get(f"{sandbox.base_url}/_sandbox/accounts").text

    assert "secret-value" not in listed
    assert "whsec_value" not in listed
    assert "0123456789abcdef" not in listed
    assert '"has_api_secret":true' in listed.replace(" ", "")


async def test_error_rate_refuses_before_executing(sandbox: SandboxAdmin) -> None:
    case = make_case("json", sandbox.base_url)
    sandbox.register_account("json", case.account, api_secret=case.api_secret)
    sandbox.set_faults("json", error_rate=1.0)
    gateway = case.gateway()
    try:
        with pytest.raises(Ambiguous):
            await gateway.deposit(payment())
        assert sandbox.ledger(provider="json") == []
        sandbox.set_faults("json", error_rate=0.0)
        await gateway.deposit(payment())
    finally:
        await gateway.aclose()
    assert len(sandbox.ledger(provider="json")) == 1


async def test_latency_and_decline_faults(sandbox: SandboxAdmin) -> None:
    case = make_case("soap", sandbox.base_url)
    sandbox.register_account("soap", case.account, api_secret=case.api_secret)
    sandbox.set_faults("soap", latency_ms=300, decline_code="do_not_honor")
    gateway = case.gateway()
    try:
        started = time.monotonic()
        outcome = await gateway.deposit(payment())
        elapsed = time.monotonic() - started
    finally:
        await gateway.aclose()
    assert elapsed >= 0.3
    assert isinstance(outcome, Declined)
    assert outcome.code == "do_not_honor"


async def test_manual_settlement_and_delivery_log(
    sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    case = make_case("json", sandbox.base_url)
    sandbox.register_account(
        "json",
        case.account,
        api_secret=case.api_secret,
        webhook_url=receiver.url + "/manual",
        webhook_secret=case.webhook_secret,
    )
    sandbox.set_faults("json", default_outcome="pending", auto_settle=False)
    gateway = case.gateway()
    try:
        request = payment()
        pending = await gateway.deposit(request)
        assert isinstance(pending, Pending)
    finally:
        await gateway.aclose()
    [entry] = sandbox.ledger(idempotency_key=request.idempotency_key)
    assert entry["status"] == "pending"

    sandbox.settle("json", pending.provider_reference, succeed=False)

    received = receiver.wait(lambda got: len(got) == 2, path="/manual")
    assert [json.loads(r.body)["type"] for r in received] == ["payment.pending", "payment.declined"]
    log = wait_for(
        lambda: [
            d for d in sandbox.callbacks(reference=request.idempotency_key) if d["status_code"]
        ],
        timeout=5,
        what="delivery log",
    )
    assert {d["status_code"] for d in log} == {200}


def test_unreachable_webhook_is_logged_not_fatal(sandbox: SandboxAdmin) -> None:
    key = f"sk_test_{uuid.uuid4().hex}"
    sandbox.register_account(
        "stripe", key, webhook_url="http://127.0.0.1:9/nowhere", webhook_secret="whsec_x"
    )
    _stripe(sandbox.base_url, key).v1.payment_intents.create(
        {"amount": 300, "currency": "eur", "confirm": True, "payment_method": "pm_card_visa"}
    )
    attempts = wait_for(
        lambda: [d for d in sandbox.callbacks(provider="stripe") if d["attempt"] == 2],
        timeout=10,
        what="two delivery attempts",
    )
    assert attempts[0]["error"]
    assert sandbox.healthy()


def test_soap_endpoint_refuses_dtds(sandbox: SandboxAdmin) -> None:
    lol = "&lol9;"
    evil = (
        '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
            for i in range(1, 10)
        )
        + f"]><e>{lol}</e>"
    )
    started = time.monotonic()
    response = httpx.post(
        f"{sandbox.base_url}/soapbank/v1/PaymentService",
        content=evil,
        headers={"Content-Type": "text/xml", "SOAPAction": '"urn:soapbank:payments:v1#Deposit"'},
    )
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    assert b"INVALID_REQUEST" in response.content
    assert b"soap:Client" in response.content


def test_unknown_scenario_is_a_clear_error(sandbox: SandboxAdmin) -> None:
    key = f"sk_test_{uuid.uuid4().hex}"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _stripe(sandbox.base_url, key).v1.payment_intents.create(
            {
                "amount": 300,
                "currency": "eur",
                "confirm": True,
                "payment_method": "pm_card_visa",
                "metadata": {"sandbox_scenario": "explode"},
            }
        )
    assert "explode" in str(caught.value)


@pytest.mark.parametrize("provider", ["stripe", "json", "soap"])
async def test_provision_gives_working_connection_credentials(
    provider: str, sandbox: SandboxAdmin, receiver: CallbackReceiver
) -> None:
    from paystream_gateways import ClientOptions, Succeeded, default_registry

    spec = default_registry().get(provider)
    creds = sandbox.provision(provider, webhook_url=f"{receiver.url}/provisioned/{provider}")
    gateway = spec.factory(spec.validate(creds), ClientOptions())
    try:
        request = payment()
        assert isinstance(await gateway.deposit(request), Succeeded)
        [hook, *_] = receiver.wait(bool, path=f"/provisioned/{provider}")
        gateway.verify_callback(hook.headers, hook.body)
        assert gateway.parse_callback(hook.body).reference == request.idempotency_key
    finally:
        await gateway.aclose()


async def test_decline_rate_is_exact_and_calls_are_counted(sandbox: SandboxAdmin) -> None:
    case = make_case("json", sandbox.base_url)
    sandbox.register_account("json", case.account, api_secret=case.api_secret)
    sandbox.set_faults("json", decline_rate=0.6)
    before = sandbox.calls()["json"]
    gateway = case.gateway()
    try:
        outcomes = [await gateway.deposit(payment()) for _ in range(10)]
        sandbox.set_faults("json", down=True)
        with pytest.raises(NotExecuted):  # refused: still a call the provider received
            await gateway.deposit(payment())
    finally:
        await gateway.aclose()
    declined = [o for o in outcomes if isinstance(o, Declined)]
    assert len(declined) == 6  # evenly spread, not drawn: exactly 60% of 10
    assert {o.code for o in declined} == {"do_not_honor"}
    assert sandbox.calls()["json"] - before == 11
