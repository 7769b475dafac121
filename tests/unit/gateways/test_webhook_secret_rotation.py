"""Rotating a connection's webhook secret: callbacks signed with the old one still verify
until the provider has switched; anything else is still refused."""

from __future__ import annotations

import pytest

from paystream_gateways import signing
from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import CallbackRejected
from paystream_gateways.protocol import ClientOptions, Gateway
from paystream_gateways.registry import default_registry

BODY = b'{"id": "evt_1"}'
CREDENTIALS = {
    "stripe": {"api_key": "sk_test_x", "webhook_secret": "whsec_new"},
    "json": {
        "base_url": "http://127.0.0.1:9",
        "merchant_id": "m",
        "api_secret": "a",
        "webhook_secret": "whsec_new",
    },
    "soap": {
        "endpoint_url": "http://127.0.0.1:9/ps",
        "merchant_id": "m",
        "api_secret": "a",
        "webhook_secret": "whsec_new",
    },
}
HEADER = {"stripe": "Stripe-Signature", "json": "JsonPay-Signature", "soap": "X-SoapBank-Signature"}


def _gateway(provider: str, **extra: str) -> Gateway:
    spec = default_registry().get(provider)
    creds = spec.validate({**CREDENTIALS[provider], **extra})
    return spec.factory(Credentials(creds), ClientOptions())


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_previous_secret_verifies_during_rotation(provider: str) -> None:
    gateway = _gateway(provider, webhook_secret_previous="whsec_old")
    for secret in ("whsec_new", "whsec_old"):
        gateway.verify_callback({HEADER[provider]: signing.sign(secret, BODY)}, BODY)
    with pytest.raises(CallbackRejected):
        gateway.verify_callback({HEADER[provider]: signing.sign("whsec_other", BODY)}, BODY)


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_without_a_previous_secret_the_old_one_is_refused(provider: str) -> None:
    gateway = _gateway(provider)
    with pytest.raises(CallbackRejected):
        gateway.verify_callback({HEADER[provider]: signing.sign("whsec_old", BODY)}, BODY)
