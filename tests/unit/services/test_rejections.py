"""Which dead-lettered command records name a transaction that can be stored rejected."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from paystream_gateway_worker.rejections import identify
from paystream_streams.records import RawRecord

TENANT = uuid.uuid4()
TXN = uuid.uuid4()
DATA: dict[str, Any] = {
    "transaction_id": str(TXN),
    "tenant_id": str(TENANT),
    "idempotency_key": "key-1",
    "payload_hash": "a" * 64,
    "account_id": "acc-1",
    "country": "DE",
    "amount_minor": 1234,
    "currency": "EUR",
    "requested_at": "2026-01-01T00:00:00Z",
    "metadata": {"note": "nul\x00"},
    "payment_method": "card\x00",
}
BINARY = [("ce_type", b"paystream.deposit.requested.v1"), ("content-type", b"application/json")]


def _binary(data: Any, headers: list[tuple[str, bytes]] = BINARY) -> RawRecord:
    return RawRecord("commands", 0, 1, b"acc-1", json.dumps(data).encode(), headers)


def test_binary_mode_names_its_transaction_without_the_risky_fields() -> None:
    found = identify(_binary(DATA))
    assert found is not None
    txn = found.transaction
    assert (found.tenant_id, txn.id, txn.amount_minor, txn.type) == (
        TENANT,
        TXN,
        1234,
        "deposit",
    )
    assert txn.metadata == {}
    assert txn.payment_method is None


def test_structured_mode_is_read_too() -> None:
    event = {"type": "paystream.withdrawal.requested.v1", "data": DATA}
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    record = RawRecord("commands", 0, 1, b"acc-1", json.dumps(event).encode(), headers)
    found = identify(record)
    assert found is not None
    assert found.transaction.type == "withdrawal"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant_id", "not-a-uuid"),
        ("account_id", "acc\x00"),
        ("amount_minor", 0),
        ("amount_minor", 2**63),
        ("amount_minor", "12"),
        ("amount_minor", True),
        ("currency", "eur"),
        ("country", "DEU"),
        ("idempotency_key", "k\n"),
        ("payload_hash", "xyz"),
    ],
)
def test_a_field_that_cannot_be_stored_names_nothing(field: str, value: Any) -> None:
    assert identify(_binary({**DATA, field: value})) is None


def test_records_that_are_not_commands_name_nothing() -> None:
    assert identify(_binary(DATA, [("ce_type", b"paystream.transaction.succeeded.v1")])) is None
    assert identify(_binary(DATA, [])) is None
    assert identify(_binary([DATA])) is None
    assert identify(RawRecord("commands", 0, 1, None, b"\xff", BINARY)) is None
    assert identify(RawRecord("commands", 0, 1, None, None, BINARY)) is None
