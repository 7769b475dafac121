"""POST /v1/withdrawals names its destination: bank details (the default kind) or a Stripe
connected account. Either travels sealed; only its mask is readable; a bad one is 422
naming the field."""

from __future__ import annotations

import httpx
import pytest

from paystream_messaging.cloudevents_codec import decode
from paystream_messaging.schemas import SchemaRegistry
from tests.integration.ingest.conftest import IngestEnv
from tests.support.kafka import consume_until, end_offsets

pytestmark = pytest.mark.integration

ACCOUNT = "acct_1Nv0FGQ9RKHgCVdK"
WITHDRAWAL = {"account_id": "user-42", "country": "DE", "amount": "25.50", "currency": "EUR"}
TO_ACCOUNT = {"type": "stripe_account", "account": ACCOUNT}
BANK = {"holder_name": "Erika Mustermann", "iban": "DE89370400440532013000"}


def _withdraw(env: IngestEnv, destination: object, key: str | None = None) -> httpx.Response:
    return env.post("/v1/withdrawals", {**WITHDRAWAL, "destination": destination}, key=key)


def _fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return {e["field"] for e in response.json()["errors"]}


def test_connected_account_travels_sealed_with_its_mask(ingest_env: IngestEnv) -> None:
    response = _withdraw(ingest_env, TO_ACCOUNT)
    assert response.status_code == 202, response.text

    [record] = consume_until(
        ingest_env.settings.kafka_bootstrap,
        ingest_env.settings.topic("commands"),
        lambda records: len(records) >= 1,
        timeout=30,
    )
    everything = (record.value or b"") + b"".join(record.headers.values())
    assert ACCOUNT.encode() not in everything
    assert b"stripe_account" not in everything
    event = decode(record.key, record.value, list(record.headers.items()), SchemaRegistry())
    assert event.type == "paystream.withdrawal.requested.v1"
    assert event.data["destination"]["masked"] == "acct_…CVdK"
    assert event.data["destination"]["ciphertext"]


@pytest.mark.parametrize(
    "destination",
    [
        BANK,
        {"type": "bank", **BANK},
        {"holder_name": "Erika Mustermann", "account_number": "12345678", "bank_code": "GB1"},
        TO_ACCOUNT,
        {"type": "stripe_account", "account": "acct_" + "A1" * 125},
    ],
)
def test_valid_destinations_are_accepted(ingest_env: IngestEnv, destination: object) -> None:
    response = _withdraw(ingest_env, destination)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("destination", "field"),
    [
        ({"type": "stripe_account", "account": "acct_12"}, "destination.account"),
        ({"type": "stripe_account", "account": "acct_"}, "destination.account"),
        ({"type": "stripe_account", "account": "ACCT_1Nv0FGQ9RKHgCVdK"}, "destination.account"),
        ({"type": "stripe_account", "account": "cus_1Nv0FGQ9RKHgCVdK"}, "destination.account"),
        ({"type": "stripe_account", "account": "acct_1Nv0 FGQ9RKHgCVdK"}, "destination.account"),
        ({"type": "stripe_account", "account": "acct_1Nv0FGQ9RKHgCVdK\n"}, "destination.account"),
        ({"type": "stripe_account", "account": "acct_ÄNv0FGQ9RKHgCVdK"}, "destination.account"),
        ({"type": "stripe_account", "account": "acct_" + "A" * 251}, "destination.account"),
        ({"type": "stripe_account", "account": 12345678}, "destination.account"),
        ({"type": "stripe_account"}, "destination.account"),
        ({**TO_ACCOUNT, "iban": BANK["iban"]}, "destination.iban"),
        ({**BANK, "account": ACCOUNT}, "destination.account"),
        ({"type": "paypal", "email": "a@example.com"}, "destination"),
        ({"type": None, **BANK}, "destination"),
        ({"type": "Stripe_Account", "account": ACCOUNT}, "destination"),
        ("acct_1Nv0FGQ9RKHgCVdK", "destination"),
        ({**BANK, "type": "bank", "iban": "DE00370400440532013000"}, "destination.iban"),
    ],
)
def test_bad_destinations_name_the_field(
    ingest_env: IngestEnv, destination: object, field: str
) -> None:
    response = _withdraw(ingest_env, destination)
    assert field in _fields(response), response.text


def test_bad_destinations_publish_nothing(ingest_env: IngestEnv) -> None:
    _fields(_withdraw(ingest_env, {"type": "stripe_account", "account": "acct_x"}))
    settings = ingest_env.settings
    assert end_offsets(settings.kafka_bootstrap, settings.topic("commands"), 6) == 0


def test_same_key_replays_and_another_account_conflicts(ingest_env: IngestEnv) -> None:
    first = _withdraw(ingest_env, TO_ACCOUNT, key="payout-acct-1")
    again = _withdraw(ingest_env, TO_ACCOUNT, key="payout-acct-1")
    other = _withdraw(
        ingest_env, {**TO_ACCOUNT, "account": "acct_1Nv0FGQ9RKHgXXXX"}, key="payout-acct-1"
    )
    as_bank = _withdraw(ingest_env, BANK, key="payout-acct-1")

    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    assert other.status_code == 409, other.text
    assert as_bank.status_code == 409, as_bank.text


def test_openapi_documents_both_destinations(ingest_env: IngestEnv) -> None:
    doc = ingest_env.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    destination = schemas["WithdrawalRequest"]["properties"]["destination"]
    refs = {branch["$ref"].rsplit("/", 1)[-1] for branch in destination["oneOf"]}
    assert refs == {"BankDestination", "StripeAccountDestination"}
    stripe = schemas["StripeAccountDestination"]
    assert stripe["required"] == ["type", "account"]
    assert stripe["properties"]["type"]["const"] == "stripe_account"
    assert stripe["properties"]["account"]["pattern"] == "^acct_[A-Za-z0-9]{8,250}$"
    assert stripe["additionalProperties"] is False
    bank = schemas["BankDestination"]
    assert "type" not in bank.get("required", [])
    assert bank["properties"]["type"]["const"] == "bank"
    masked = schemas["Transaction"]["properties"]["destination"]["properties"]["masked"]
    assert "acct_…1234" in masked["description"]
