"""The typed events against their JSON Schemas: what we publish validates, what the schemas
promise (their `examples`) parses, and encode -> decode -> from_event gives the same value."""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from paystream_core.statuses import Status, TransactionType
from paystream_messaging.callbacks import EVENT_TYPE as CALLBACK_TYPE
from paystream_messaging.callbacks import CallbackReceived, decode_body
from paystream_messaging.cloudevents_codec import Event, decode, encode
from paystream_messaging.commands import (
    COMMAND_TYPES,
    RequestDeposit,
    RequestWithdrawal,
    SealedDestination,
    command_from_event,
)
from paystream_messaging.outcomes import (
    OUTCOME_TYPES,
    Failure,
    TransactionActionRequired,
    TransactionOutcome,
    outcome_from_event,
)
from paystream_messaging.schemas import SchemaRegistry

REGISTRY = SchemaRegistry()
TENANT = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
TXN = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
AT = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def deposit() -> RequestDeposit:
    return RequestDeposit(
        transaction_id=TXN,
        tenant_id=TENANT,
        idempotency_key="order-1",
        payload_hash="a" * 64,
        account_id="user-42",
        country="DE",
        amount_minor=10_000,
        currency="EUR",
        requested_at=AT,
        payment_method="card",
        metadata={"order_id": "4711"},
    )


def withdrawal() -> RequestWithdrawal:
    sealed = SealedDestination(b"\x00\x01sealed-bytes\xff", "k-2026-01", "DE89 **** 3000")
    return RequestWithdrawal(
        transaction_id=TXN,
        tenant_id=TENANT,
        idempotency_key="payout-1",
        payload_hash="b" * 64,
        account_id="user-42",
        country="DE",
        amount_minor=2500,
        currency="EUR",
        requested_at=AT,
        destination=sealed,
    )


def callback(body: bytes = b'{"id":"evt_1"}') -> CallbackReceived:
    return CallbackReceived(
        gateway="stripe",
        connection_id=uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        tenant_id=TENANT,
        received_at=AT,
        body=body,
        headers={"content-type": "application/json", "stripe-signature": "t=1,v1=ab"},
    )


def outcome(status: Status) -> TransactionOutcome:
    cls = OUTCOME_TYPES[status]
    failed = status in (Status.FAILED, Status.REJECTED)
    fields: dict[str, Any] = {
        "transaction_id": TXN,
        "tenant_id": TENANT,
        "account_id": "user-42",
        "type": TransactionType.WITHDRAWAL,
        "version": 7,
        "amount_minor": 2500,
        "currency": "EUR",
        "gateway": None if status == Status.REJECTED else "jsonpay",
        "provider_reference": None if status == Status.PROCESSING else "pi_1",
        "failure": Failure("insufficient_funds", "no money") if failed else None,
        "occurred_at": AT,
    }
    if cls is TransactionActionRequired:
        return TransactionActionRequired(**fields, redirect_url="https://bank.example/3ds")
    return cls(**fields)


Typed = RequestDeposit | CallbackReceived | TransactionOutcome
SAMPLES: dict[str, Callable[[], Typed]] = {
    "deposit": deposit,
    "withdrawal": withdrawal,
    "callback": callback,
    "callback-binary": functools.partial(callback, b"\xff\xfe<xml/>"),
    **{f"outcome-{s.value}": functools.partial(outcome, s) for s in OUTCOME_TYPES},
}


def to_event(value: Typed) -> Event:
    if isinstance(value, CallbackReceived):
        return value.to_event(source="/test", partition_key="pi_1")
    return value.to_event(source="/test")


def from_event(event: Event) -> Typed:
    if event.type == CALLBACK_TYPE:
        return CallbackReceived.from_event(event)
    if event.type in COMMAND_TYPES:
        return command_from_event(event)
    return outcome_from_event(event)


def test_every_typed_event_has_a_schema_and_every_schema_a_type() -> None:
    typed = {CALLBACK_TYPE, *COMMAND_TYPES, *(cls.EVENT_TYPE for cls in OUTCOME_TYPES.values())}
    assert typed == set(REGISTRY.event_types)
    for event_type in typed:
        assert (REGISTRY.directory / f"{event_type}.json").is_file()
    assert set(OUTCOME_TYPES) == set(Status) - {Status.RECEIVED}


@pytest.mark.parametrize("name", SAMPLES)
def test_data_validates_against_the_schema(name: str) -> None:
    value = SAMPLES[name]()
    event = to_event(value)
    if isinstance(value, CallbackReceived):
        assert event.type == CALLBACK_TYPE  # its data exists only on the event
    else:
        assert event.type == value.EVENT_TYPE
        assert event.data == value.data()
        assert event.id == str(value.event_id())
    REGISTRY.validate(event.type, event.data)


@pytest.mark.parametrize("name", SAMPLES)
def test_encode_decode_from_event_round_trips(name: str) -> None:
    value = SAMPLES[name]()
    event = to_event(value)
    record = encode(event, REGISTRY)
    decoded = decode(record.key, record.value, record.headers, REGISTRY)
    assert decoded == event
    assert from_event(decoded) == value


EXAMPLES = [
    (event_type, index)
    for event_type in REGISTRY.event_types
    for index, _ in enumerate(REGISTRY.schema(event_type).get("examples", []))
]


def test_every_schema_has_examples() -> None:
    assert {event_type for event_type, _ in EXAMPLES} == set(REGISTRY.event_types)


@pytest.mark.parametrize(("event_type", "index"), EXAMPLES)
def test_schema_examples_parse_back(event_type: str, index: int) -> None:
    example: dict[str, Any] = copy.deepcopy(REGISTRY.schema(event_type)["examples"][index])
    parsed = from_event(around(event_type, example))
    republished = to_event(parsed).data
    REGISTRY.validate(event_type, republished)
    assert from_event(around(event_type, republished)) == parsed
    # The same content; only base64 may be spelled differently (a UTF-8 body is published
    # as text, padding bits are canonical).
    assert unbase64(republished) == unbase64(example)


def around(event_type: str, data: dict[str, Any]) -> Event:
    return Event(
        id=str(uuid.uuid4()),
        source="/schemas",
        type=event_type,
        time=AT,
        tenant_id=data["tenant_id"],
        partition_key=data.get("account_id", "key"),
        data=data,
    )


def unbase64(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if "body_encoding" in out:
        out["body"] = decode_body(out.pop("body"), out.pop("body_encoding"))
    if "destination" in out:
        out["destination"]["ciphertext"] = base64.b64decode(out["destination"]["ciphertext"])
    return out


def test_timestamps_keep_their_offset_and_precision() -> None:
    elsewhere = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    value = dataclasses.replace(outcome(Status.SUCCEEDED), occurred_at=elsewhere)
    assert value.data()["occurred_at"] == "2026-03-01T15:00:15.123456+05:30"
    assert outcome_from_event(value.to_event(source="/t")).occurred_at == AT
    assert deposit().data()["requested_at"] == "2026-03-01T09:30:15.123456Z"
