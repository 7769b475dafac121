"""HMAC signatures, the request type, registry validation and error classification."""

from __future__ import annotations

import uuid

import httpx
import pytest

from paystream_core.money import MoneyError
from paystream_gateways import (
    Ambiguous,
    AmbiguousReason,
    InvalidCredentials,
    NotExecuted,
    NotExecutedReason,
    PaymentRequest,
    UnsupportedProvider,
    default_registry,
)
from paystream_gateways.signing import SignatureError, sign, verify
from paystream_gateways.stripe_gateway import intent_outcome
from paystream_gateways.transport import classify_transport_error


def test_signature_round_trip_and_tolerance() -> None:
    header = sign("s3cret", b"body", timestamp=1_000)

    assert verify("s3cret", header, b"body", tolerance_s=300, now=1_100) == 1_000
    for now in (1_000 + 301, 1_000 - 301):  # too old, and from the future
        with pytest.raises(SignatureError) as stale:
            verify("s3cret", header, b"body", tolerance_s=300, now=now)
        assert stale.value.reason == "stale"


@pytest.mark.parametrize(
    ("header", "body", "secret"),
    [
        (sign("s3cret", b"body", timestamp=1_000), b"b0dy", "s3cret"),
        (sign("s3cret", b"body", timestamp=1_000), b"body", "other"),
        (sign("s3cret", b"body", timestamp=1_000).replace("t=1000", "t=1001"), b"body", "s3cret"),
        ("t=1000", b"body", "s3cret"),
        ("v1=abc", b"body", "s3cret"),
        ("t=x,v1=abc", b"body", "s3cret"),
        ("", b"body", "s3cret"),
    ],
)
def test_bad_signatures(header: str, body: bytes, secret: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(secret, header, body, tolerance_s=300, now=1_000)
    assert caught.value.reason == "signature"


def test_any_of_several_signatures_may_match() -> None:
    good = sign("new", b"body", timestamp=5).split(",")[1]
    header = f"t=5,v1={'0' * 64},{good}"
    assert verify("new", header, b"body", tolerance_s=10, now=5) == 5


def test_payment_request_is_validated_and_keeps_destination_out_of_repr() -> None:
    txn = uuid.uuid4()
    request = PaymentRequest.for_attempt(
        txn,
        2,
        account_id="acc",
        amount_minor=100,
        currency="EUR",
        country="DE",
        destination={"iban": "DE89370400440532013000"},
        metadata={"paystream_reference": "spoofed", "order": "42"},
    )

    assert request.idempotency_key == f"ps-{txn}-2"
    assert "DE89370400440532013000" not in repr(request)
    meta = request.provider_metadata()
    assert meta["paystream_reference"] == request.idempotency_key  # ours wins
    assert meta["order"] == "42"
    with pytest.raises(MoneyError):
        PaymentRequest.for_attempt(
            txn, 1, account_id="a", amount_minor=1, currency="XXX", country="DE"
        )
    with pytest.raises(ValueError, match="positive"):
        PaymentRequest.for_attempt(
            txn, 1, account_id="a", amount_minor=0, currency="EUR", country="DE"
        )


def test_registry_validates_names_never_echoing_values() -> None:
    spec = default_registry().get("json")

    with pytest.raises(InvalidCredentials, match="missing credential field") as missing:
        spec.validate({"base_url": "http://x", "api_secret": "hunter2-secret"})
    with pytest.raises(InvalidCredentials, match="unknown credential field") as unknown:
        spec.validate({"bogus": "hunter2-secret"})
    with pytest.raises(UnsupportedProvider, match="'paypal'"):
        default_registry().get("paypal")

    assert "hunter2" not in str(missing.value) + str(unknown.value)
    assert (
        default_registry()
        .get("stripe")
        .validate({"api_key": "sk", "webhook_secret": "wh"})["api_base"]
        == "https://api.stripe.com"
    )
    assert default_registry().get("stripe").secret_fields == {
        "api_key",
        "webhook_secret",
        "webhook_secret_previous",
    }


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), NotExecutedReason.CONNECT_FAILED),
        (httpx.ConnectTimeout("slow"), NotExecutedReason.CONNECT_FAILED),
        (httpx.PoolTimeout("pool"), NotExecutedReason.CONNECT_FAILED),
        (httpx.ReadTimeout("read"), AmbiguousReason.TIMEOUT),
        (httpx.WriteTimeout("write"), AmbiguousReason.TIMEOUT),
        (httpx.RemoteProtocolError("reset"), AmbiguousReason.CONNECTION_LOST),
        (httpx.ReadError("reset"), AmbiguousReason.CONNECTION_LOST),
    ],
)
def test_transport_errors_are_classified(exc: Exception, expected: str) -> None:
    error = classify_transport_error("json", exc)
    assert error.reason == expected
    assert isinstance(error, NotExecuted if isinstance(expected, NotExecutedReason) else Ambiguous)


@pytest.mark.parametrize(
    ("intent", "expected"),
    [
        ({"id": "pi_1", "status": "succeeded"}, "Succeeded"),
        ({"id": "pi_1", "status": "processing"}, "Pending"),
        ({"id": "pi_1", "status": "requires_capture"}, "Pending"),
        ({"id": "pi_1", "status": "requires_payment_method"}, "Pending"),
        ({"id": "pi_1", "status": "canceled"}, "Declined"),
        (
            {
                "id": "pi_1",
                "status": "requires_payment_method",
                "last_payment_error": {"code": "card_declined", "decline_code": "fraudulent"},
            },
            "Declined",
        ),
    ],
)
def test_stripe_intent_mapping(intent: dict[str, object], expected: str) -> None:
    assert type(intent_outcome(intent)).__name__ == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"id":"evt_1","type":"charge.succeeded","created":1,"data":{"object":'
            b'{"object":"charge","id":"ch_1"}}}',
            "unsupported",
        ),
        (b'{"id":"evt_1"}', "malformed"),
        (b"not json", "malformed"),
    ],
)
async def test_stripe_callbacks_we_do_not_use(body: bytes, reason: str) -> None:
    from paystream_gateways import CallbackRejected, ClientOptions, Credentials
    from paystream_gateways.stripe_gateway import StripeGateway

    gateway = StripeGateway(
        Credentials({"api_key": "sk_test_x", "webhook_secret": "w"}), ClientOptions()
    )
    try:
        with pytest.raises(CallbackRejected) as caught:
            gateway.parse_callback(body)
    finally:
        await gateway.aclose()
    assert caught.value.reason == reason


@pytest.mark.parametrize("key", ["idempotency_key", "headers", "stripe_account", "base"])
async def test_stripe_creates_refuse_parameters_the_sdk_would_take_as_options(key: str) -> None:
    """Creates go through the SDK's raw request, which reads these keys as request options
    (our Idempotency-Key among them): one among the parameters is refused before anything
    is sent, instead of silently changing the request."""
    from paystream_gateways import ClientOptions, Credentials
    from paystream_gateways.stripe_gateway import StripeGateway

    gateway = StripeGateway(
        Credentials({"api_key": "sk_test_x", "webhook_secret": "w"}), ClientOptions()
    )
    try:
        with pytest.raises(ValueError, match=key):
            await gateway._create("/v1/payment_intents", {"amount": 100, key: "x"}, "k-1")
    finally:
        await gateway.aclose()
