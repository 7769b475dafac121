"""Commands produced straight to Kafka meet the ingest API's limits: what storage or the
ledger cannot hold fails decoding with InvalidEvent (which the gateway worker
dead-letters with the reason) before anything is stored or any provider is called."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream_core import limits
from paystream_messaging.cloudevents_codec import InvalidEvent, decode, encode
from paystream_messaging.commands import (
    RequestDeposit,
    RequestWithdrawal,
    SealedDestination,
    command_from_event,
)
from paystream_messaging.schemas import SchemaRegistry

REGISTRY = SchemaRegistry()


def _deposit(**change: Any) -> RequestDeposit:
    fields: dict[str, Any] = {
        "transaction_id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "idempotency_key": "order-1",
        "payload_hash": "a" * 64,
        "account_id": "user-42",
        "country": "DE",
        "amount_minor": 10_000,
        "currency": "EUR",
        "requested_at": datetime(2026, 3, 1, tzinfo=UTC),
        "payment_method": "card",
        "metadata": {"order_id": "4711"},
    }
    return RequestDeposit(**{**fields, **change})


def _decoded(command: RequestDeposit, **data_change: Any) -> RequestDeposit:
    """Through the wire as another producer would write it: data edited after encoding,
    so nothing on our producing side gets a say."""
    record = encode(command.to_event(source="/elsewhere"), REGISTRY)
    data = {**json.loads(record.value), **data_change}
    value = json.dumps(data).encode()
    return command_from_event(decode(record.key, value, record.headers, REGISTRY))


def test_a_valid_command_and_the_ceiling_itself_pass() -> None:
    assert _decoded(_deposit()).amount_minor == 10_000
    assert _decoded(_deposit(), amount_minor=10**12).amount_minor == 10**12
    assert _decoded(_deposit(currency="JPY"), amount_minor=10**12).currency == "JPY"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # The schema's bounds: the largest ceiling of any currency, control characters.
        ({"amount_minor": 9_223_372_036_854_775_807}, "amount_minor"),
        ({"amount_minor": 10**12 + 1}, "amount_minor"),
        ({"payment_method": "card\u0000"}, "payment_method"),
        ({"metadata": {"note": "a\u0000b"}}, "metadata"),
        ({"metadata": {"note": "line\nbreak"}}, "metadata"),
        ({"idempotency_key": "k\u0000"}, "idempotency_key"),
        # Not JSON-Schema-expressible, checked in code.
        ({"currency": "XXX"}, "currency: 'XXX' is not a supported ISO 4217 currency"),
        ({"country": "ZZ"}, "country: 'ZZ' is not an ISO 3166-1 code"),
        ({"metadata": {"note": "\ud800"}}, "lone surrogate"),
        ({"payment_method": "x\udfff"}, "lone surrogate"),
    ],
)
def test_what_cannot_be_stored_is_an_invalid_event(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        _decoded(_deposit(), **change)
    assert reason in raised.value.reason


def test_per_currency_ceilings_are_checked_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema can only state the largest ceiling; a currency with a lower one (a
    future entry in CURRENCY_MAX_MINOR) is checked against its own."""
    monkeypatch.setattr(limits, "CURRENCY_MAX_MINOR", dict(limits.CURRENCY_MAX_MINOR, EUR=1_000))
    with pytest.raises(InvalidEvent, match=r"beyond limits: amount: at most 10\.00 EUR"):
        _decoded(_deposit(), amount_minor=1_001)
    assert _decoded(_deposit(), amount_minor=1_000).amount_minor == 1_000


def test_withdrawal_destination_texts_are_checked() -> None:
    base = _deposit()
    sealed = SealedDestination(b"sealed-bytes", "k-1", "DE89 **** 3000")
    command = RequestWithdrawal(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, destination=sealed
    )
    assert isinstance(_decoded(command), RequestWithdrawal)
    bad = {**command.destination.data(), "masked": "DE89\u0000"}
    with pytest.raises(InvalidEvent, match="masked"):
        _decoded(command, destination=bad)
