"""CloudEvents <-> Kafka record codec (binary out, binary or structured in)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from paystream_messaging.cloudevents_codec import (
    DataNotObject,
    Event,
    EventNotJSON,
    EventSchemaMismatch,
    InvalidAttribute,
    InvalidEvent,
    KafkaRecord,
    MissingAttribute,
    UnknownType,
    UnsupportedSpecVersion,
    decode,
    encode,
)
from paystream_messaging.schemas import SchemaRegistry, SchemaViolation, UnknownEventType

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DEPOSIT = "paystream.deposit.requested.v1"
FAILED = "paystream.transaction.failed.v1"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

Headers = list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(REPO_SCHEMAS)


def data_for(registry: SchemaRegistry, event_type: str) -> dict[str, Any]:
    first: dict[str, Any] = registry.schema(event_type)["examples"][0]
    return copy.deepcopy(first)


@pytest.fixture
def event(registry: SchemaRegistry) -> Event:
    data = data_for(registry, DEPOSIT)
    return Event(
        id="3f1c2a9e-0000-4000-8000-000000000001",
        source="/paystream/api",
        type=DEPOSIT,
        time=datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        tenant_id=data["tenant_id"],
        partition_key=data["account_id"],
        data=data,
        traceparent=TRACEPARENT,
        subject=data["transaction_id"],
    )


@pytest.fixture
def record(event: Event, registry: SchemaRegistry) -> KafkaRecord:
    return encode(event, registry)


def header(headers: Headers, name: str) -> bytes:
    values = [value for key, value in headers if key == name]
    assert len(values) == 1, f"{name} appears {len(values)} times"
    return values[0]


def without(headers: Headers, name: str) -> Headers:
    return [(key, value) for key, value in headers if key != name]


def replaced(headers: Headers, name: str, value: bytes) -> Headers:
    return [*without(headers, name), (name, value)]


def reason_of(
    error: type[InvalidEvent],
    registry: SchemaRegistry,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
) -> str:
    with pytest.raises(error) as caught:
        decode(key, value, headers, registry)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def structured(event: Event) -> dict[str, Any]:
    """The same event in structured mode, written by hand (not by the SDK)."""
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time.isoformat(),
        "subject": event.subject,
        "datacontenttype": "application/json",
        "tenantid": event.tenant_id,
        "partitionkey": event.partition_key,
        "traceparent": event.traceparent,
        "data": event.data,
    }


STRUCTURED_HEADERS: Headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]


# --- encode -------------------------------------------------------------------------------


def test_encode_is_binary_mode(event: Event, record: KafkaRecord) -> None:
    headers = record.headers
    assert record.key == b"user-42"
    assert json.loads(record.value) == event.data
    assert header(headers, "content-type") == b"application/json"
    assert header(headers, "ce_specversion") == b"1.0"
    assert header(headers, "ce_id") == event.id.encode()
    assert header(headers, "ce_source") == b"/paystream/api"
    assert header(headers, "ce_type") == DEPOSIT.encode()
    assert header(headers, "ce_time") == b"2025-01-15T10:30:00.123456+02:00"
    assert header(headers, "ce_tenantid") == event.tenant_id.encode()
    assert header(headers, "ce_partitionkey") == b"user-42"
    assert header(headers, "ce_traceparent") == TRACEPARENT.encode()
    assert header(headers, "ce_subject") == event.subject.encode()  # type: ignore[union-attr]
    assert all(isinstance(v, bytes) for _, v in headers)


def test_encode_utc_time_uses_z(event: Event, registry: SchemaRegistry) -> None:
    utc = Event(**{**_fields(event), "time": datetime(2025, 1, 15, 8, 30, tzinfo=UTC)})
    assert header(encode(utc, registry).headers, "ce_time") == b"2025-01-15T08:30:00Z"


def test_encode_omits_absent_optional_attributes(event: Event, registry: SchemaRegistry) -> None:
    bare = Event(**{**_fields(event), "traceparent": None, "subject": None})
    names = {name for name, _ in encode(bare, registry).headers}
    assert "ce_traceparent" not in names
    assert "ce_subject" not in names
    assert decode(*_parts(encode(bare, registry)), registry) == bare


def test_encode_validates_data_first(event: Event, registry: SchemaRegistry) -> None:
    bad = Event(**{**_fields(event), "data": {**event.data, "amount_minor": 1.5}})
    with pytest.raises(SchemaViolation, match=r"\$.amount_minor: 1.5 is not of type 'integer'"):
        encode(bad, registry)


def test_encode_unknown_type(event: Event, registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownEventType):
        encode(Event(**{**_fields(event), "type": "paystream.nope.v1"}), registry)


def test_encode_refuses_tenant_mismatch(event: Event, registry: SchemaRegistry) -> None:
    other = Event(**{**_fields(event), "tenant_id": "11111111-1111-4111-8111-111111111111"})
    with pytest.raises(InvalidAttribute, match=r"does not match data\.tenant_id"):
        encode(other, registry)


def test_event_requires_aware_time(event: Event) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Event(**{**_fields(event), "time": datetime(2025, 1, 1)})


def test_event_requires_partition_key(event: Event) -> None:
    with pytest.raises(ValueError, match="partition_key must not be empty"):
        Event(**{**_fields(event), "partition_key": ""})


# --- round trips --------------------------------------------------------------------------


def test_binary_round_trip_preserves_every_attribute(
    event: Event, record: KafkaRecord, registry: SchemaRegistry
) -> None:
    decoded = decode(record.key, record.value, record.headers, registry)
    assert decoded == event
    assert decoded.time.utcoffset() == timedelta(hours=2)
    assert decoded.time.microsecond == 123456


@pytest.mark.parametrize("event_type", sorted(SchemaRegistry(REPO_SCHEMAS).event_types))
def test_round_trip_every_type(event: Event, registry: SchemaRegistry, event_type: str) -> None:
    data = data_for(registry, event_type)
    typed = Event(
        **{**_fields(event), "type": event_type, "data": data, "tenant_id": data["tenant_id"]}
    )
    assert decode(*_parts(encode(typed, registry)), registry) == typed


def test_structured_mode_decodes_to_the_same_event(event: Event, registry: SchemaRegistry) -> None:
    value = json.dumps(structured(event)).encode()
    assert decode(b"user-42", value, STRUCTURED_HEADERS, registry) == event


def test_structured_mode_takes_partition_key_from_record_key(
    event: Event, registry: SchemaRegistry
) -> None:
    document = structured(event)
    del document["partitionkey"]
    assert decode(b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS, registry) == event


def test_binary_mode_without_record_key_uses_header(
    record: KafkaRecord, event: Event, registry: SchemaRegistry
) -> None:
    assert decode(None, record.value, record.headers, registry) == event


def test_header_names_are_case_insensitive(
    record: KafkaRecord, event: Event, registry: SchemaRegistry
) -> None:
    upper = [(name.upper(), value) for name, value in record.headers]
    assert decode(record.key, record.value, upper, registry) == event


def test_content_type_defaults_to_json(
    record: KafkaRecord, event: Event, registry: SchemaRegistry
) -> None:
    headers = without(record.headers, "content-type")
    assert decode(record.key, record.value, headers, registry) == event


def test_unrelated_headers_are_ignored(
    record: KafkaRecord, event: Event, registry: SchemaRegistry
) -> None:
    headers = [*record.headers, ("x-retry-count", b"\xff"), ("x-empty", None)]
    assert decode(record.key, record.value, headers, registry) == event


# --- rejections: attributes ---------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type", "time"])
def test_binary_missing_required_attribute(
    record: KafkaRecord, registry: SchemaRegistry, attribute: str
) -> None:
    headers = without(record.headers, f"ce_{attribute}")
    with pytest.raises(MissingAttribute) as caught:
        decode(record.key, record.value, headers, registry)
    assert caught.value.attribute == attribute
    assert caught.value.reason == (
        f"missing required CloudEvents attribute '{attribute}' (header ce_{attribute})"
    )


@pytest.mark.parametrize("attribute", ["id", "source", "type"])
def test_binary_empty_required_attribute(
    record: KafkaRecord, registry: SchemaRegistry, attribute: str
) -> None:
    headers = replaced(record.headers, f"ce_{attribute}", b"")
    reason = reason_of(MissingAttribute, registry, record.key, record.value, headers)
    assert f"missing required CloudEvents attribute '{attribute}'" in reason


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type", "time", "tenantid"])
def test_structured_missing_required_attribute(
    event: Event, registry: SchemaRegistry, attribute: str
) -> None:
    document = structured(event)
    del document[attribute]
    reason = reason_of(
        MissingAttribute, registry, b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    kind = "extension" if attribute == "tenantid" else "attribute"
    assert reason == f"missing required CloudEvents {kind} '{attribute}' ({attribute})"


def test_missing_tenant_extension(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = without(record.headers, "ce_tenantid")
    reason = reason_of(MissingAttribute, registry, record.key, record.value, headers)
    assert reason == "missing required CloudEvents extension 'tenantid' (header ce_tenantid)"


def test_missing_partition_key(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = without(record.headers, "ce_partitionkey")
    reason = reason_of(MissingAttribute, registry, None, record.value, headers)
    assert "missing required CloudEvents extension 'partitionkey'" in reason


def test_structured_missing_partition_key(event: Event, registry: SchemaRegistry) -> None:
    document = structured(event)
    del document["partitionkey"]
    reason = reason_of(
        MissingAttribute, registry, None, json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    assert "missing required CloudEvents extension 'partitionkey'" in reason


def test_record_key_must_match_partition_key(record: KafkaRecord, registry: SchemaRegistry) -> None:
    reason = reason_of(InvalidAttribute, registry, b"user-99", record.value, record.headers)
    assert reason == "record key 'user-99' does not match partitionkey 'user-42'"


@pytest.mark.parametrize("version", [b"0.3", b"2.0", b"1"])
def test_unsupported_specversion(
    record: KafkaRecord, registry: SchemaRegistry, version: bytes
) -> None:
    headers = replaced(record.headers, "ce_specversion", version)
    reason = reason_of(UnsupportedSpecVersion, registry, record.key, record.value, headers)
    assert reason == f"unsupported specversion '{version.decode()}'; only '1.0'"


def test_structured_unsupported_specversion(event: Event, registry: SchemaRegistry) -> None:
    document = {**structured(event), "specversion": "0.3"}
    reason = reason_of(
        UnsupportedSpecVersion,
        registry,
        b"user-42",
        json.dumps(document).encode(),
        STRUCTURED_HEADERS,
    )
    assert "unsupported specversion '0.3'" in reason


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        (b"yesterday", "attribute 'time' is not a valid timestamp"),
        (b"2025-01-15T10:30:00", "Attribute 'time' must be timezone aware"),
    ],
)
def test_bad_time(
    record: KafkaRecord, registry: SchemaRegistry, time: bytes, expected: str
) -> None:
    headers = replaced(record.headers, "ce_time", time)
    assert expected in reason_of(InvalidAttribute, registry, record.key, record.value, headers)


def test_structured_attribute_must_be_string(event: Event, registry: SchemaRegistry) -> None:
    document = {**structured(event), "id": 42}
    reason = reason_of(
        InvalidAttribute, registry, b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    assert reason == "attribute 'id' must be a string, got 42"


def test_bad_extension_name_is_reported(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = [*record.headers, ("ce_retry-count", b"1")]
    reason = reason_of(InvalidAttribute, registry, record.key, record.value, headers)
    assert "invalid CloudEvent" in reason
    assert "'retry-count' should only contain lowercase letters and numbers" in reason


def test_duplicate_header(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = [*record.headers, ("ce_id", b"other")]
    reason = reason_of(InvalidAttribute, registry, record.key, record.value, headers)
    assert reason == "header 'ce_id' appears more than once"


def test_header_not_utf8(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = replaced(record.headers, "ce_source", b"\xff\xfe")
    reason = reason_of(InvalidAttribute, registry, record.key, record.value, headers)
    assert reason.startswith("header 'ce_source' is not valid UTF-8")


def test_tenant_must_match_data(record: KafkaRecord, registry: SchemaRegistry) -> None:
    other = b"11111111-1111-4111-8111-111111111111"
    headers = replaced(record.headers, "ce_tenantid", other)
    reason = reason_of(InvalidAttribute, registry, record.key, record.value, headers)
    assert reason == (
        "extension tenantid '11111111-1111-4111-8111-111111111111' does not match "
        "data.tenant_id '7c9e6679-7425-40de-944b-e07fc1f90ae7'"
    )


# --- rejections: type and data ------------------------------------------------------------


def test_unknown_type(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = replaced(record.headers, "ce_type", b"com.example.order.created")
    reason = reason_of(UnknownType, registry, record.key, record.value, headers)
    assert reason.startswith("unknown event type 'com.example.order.created'")


def test_schema_violation(record: KafkaRecord, registry: SchemaRegistry) -> None:
    data = json.loads(record.value)
    data["amount_minor"] = -5
    data["currency"] = "eur"
    reason = reason_of(
        EventSchemaMismatch, registry, record.key, json.dumps(data).encode(), record.headers
    )
    assert reason == (
        "data does not match schema paystream.deposit.requested.v1: "
        "$.amount_minor: -5 is less than the minimum of 1; "
        "$.currency: 'eur' does not match '^[A-Z]{3}$'"
    )


def test_schema_violation_is_checked_for_the_declared_type(
    event: Event, registry: SchemaRegistry
) -> None:
    """A deposit command labelled as a failed outcome does not slip through."""
    document = {**structured(event), "type": FAILED}
    reason = reason_of(
        EventSchemaMismatch, registry, b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    assert "data does not match schema paystream.transaction.failed.v1" in reason
    assert "'status' is a required property" in reason


@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe{}", b"   "])
def test_binary_value_not_json(record: KafkaRecord, registry: SchemaRegistry, value: bytes) -> None:
    reason = reason_of(EventNotJSON, registry, record.key, value, record.headers)
    assert reason.startswith("data (record value) ")
    assert "JSON" in reason


def test_structured_value_not_json(registry: SchemaRegistry) -> None:
    reason = reason_of(EventNotJSON, registry, b"user-42", b"<xml/>", STRUCTURED_HEADERS)
    assert reason.startswith("structured event (record value) is not JSON: Expecting value")


def test_structured_value_not_an_object(registry: SchemaRegistry) -> None:
    reason = reason_of(EventNotJSON, registry, b"user-42", b"[1, 2]", STRUCTURED_HEADERS)
    assert reason == "structured event must be a JSON object, got an array"


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"42", "a number"), (b"null", "null")],
)
def test_binary_data_not_an_object(
    record: KafkaRecord, registry: SchemaRegistry, value: bytes, kind: str
) -> None:
    reason = reason_of(DataNotObject, registry, record.key, value, record.headers)
    assert reason == f"data must be a JSON object, got {kind}"


def test_structured_data_missing(event: Event, registry: SchemaRegistry) -> None:
    document = structured(event)
    del document["data"]
    reason = reason_of(
        DataNotObject, registry, b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    assert reason == "data must be a JSON object, got null"


def test_structured_data_base64(event: Event, registry: SchemaRegistry) -> None:
    document = structured(event)
    del document["data"]
    document["data_base64"] = "e30="
    reason = reason_of(
        DataNotObject, registry, b"user-42", json.dumps(document).encode(), STRUCTURED_HEADERS
    )
    assert reason == "data must be a JSON object, got binary data (data_base64)"


def test_tombstone(record: KafkaRecord, registry: SchemaRegistry) -> None:
    reason = reason_of(DataNotObject, registry, record.key, None, record.headers)
    assert "tombstone" in reason


def test_non_json_content_type(record: KafkaRecord, registry: SchemaRegistry) -> None:
    headers = replaced(record.headers, "content-type", b"application/xml")
    reason = reason_of(InvalidAttribute, registry, record.key, record.value, headers)
    assert reason == "unsupported content-type 'application/xml'; data must be application/json"


def test_no_headers_at_all(record: KafkaRecord, registry: SchemaRegistry) -> None:
    reason = reason_of(MissingAttribute, registry, record.key, record.value, None)
    assert reason == "missing required CloudEvents attribute 'specversion' (header ce_specversion)"


def test_batch_mode_rejected(registry: SchemaRegistry) -> None:
    headers: Headers = [("content-type", b"application/cloudevents-batch+json")]
    reason = reason_of(InvalidAttribute, registry, b"k", b"[]", headers)
    assert "application/cloudevents-batch" in reason


# --- helpers ------------------------------------------------------------------------------


def _fields(event: Event) -> dict[str, Any]:
    return {name: getattr(event, name) for name in Event.__dataclass_fields__}


def _parts(record: KafkaRecord) -> tuple[bytes, bytes, Headers]:
    return record.key, record.value, record.headers


@pytest.mark.parametrize("headers", ["binary", "structured"])
def test_a_record_nested_past_the_parser_is_not_json_not_a_crash(
    record: KafkaRecord, registry: SchemaRegistry, headers: str
) -> None:
    value = b"[" * 5000 + b"]" * 5000
    chosen = record.headers if headers == "binary" else STRUCTURED_HEADERS
    reason = reason_of(EventNotJSON, registry, record.key, value, chosen)
    assert "nested too deeply" in reason


@pytest.mark.parametrize(
    "change",
    [
        "none",
        "no key",
        "extension",
        "utc time",
        "no traceparent",
        "ce datacontenttype",
        "utf-16 value",
    ],
)
def test_binary_decoding_without_the_sdk_agrees_with_it(
    change: str,
    event: Event,
    registry: SchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Valid binary records skip building the SDK's event; what comes out is the same."""
    from paystream_messaging import cloudevents_codec

    record = encode(event, registry)
    key: bytes | None = record.key
    value = record.value
    headers = list(record.headers)
    if change == "no key":
        key = None
    elif change == "extension":
        headers.append(("ce_retrycount2", b"1"))
    elif change == "utc time":
        headers = [(n, b"2025-01-15T08:30:00Z" if n == "ce_time" else v) for n, v in headers]
    elif change == "no traceparent":
        headers = [(n, v) for n, v in headers if n != "ce_traceparent"]
    elif change == "ce datacontenttype":
        headers.append(("ce_datacontenttype", b"application/json"))
    elif change == "utf-16 value":
        value = value.decode().encode("utf-16")

    def outcome() -> Event | str:
        try:
            return decode(key, value, headers, registry)
        except InvalidEvent as exc:
            return f"{type(exc).__name__}: {exc.reason}"

    fast = outcome()
    monkeypatch.setattr(cloudevents_codec, "_as_sdk_would", lambda *_: None)
    assert fast == outcome()
