"""The JSON Schemas in schemas/ and the SchemaRegistry that loads them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from paystream_messaging.schemas import (
    SCHEMA_ID_BASE,
    SCHEMAS_DIR_ENV,
    SchemaError,
    SchemaRegistry,
    SchemasDirectoryNotFound,
    SchemaViolation,
    UnknownEventType,
    find_schemas_dir,
    iter_examples,
)

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
STATUSES = (
    "processing",
    "pending",
    "action_required",
    "unknown",
    "succeeded",
    "failed",
    "rejected",
)
COMMANDS = ("paystream.deposit.requested.v1", "paystream.withdrawal.requested.v1")
CALLBACK = "paystream.callback.received.v1"
OUTCOMES = tuple(f"paystream.transaction.{status}.v1" for status in STATUSES)
ALL_TYPES = (*COMMANDS, CALLBACK, *OUTCOMES)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(REPO_SCHEMAS)


def example(registry: SchemaRegistry, event_type: str) -> dict[str, Any]:
    first: dict[str, Any] = registry.schema(event_type)["examples"][0]
    return copy.deepcopy(first)


def violation(registry: SchemaRegistry, event_type: str, data: object) -> str:
    with pytest.raises(SchemaViolation) as caught:
        registry.validate(event_type, data)
    assert caught.value.event_type == event_type
    return caught.value.reason


# --- the contract is complete and self-consistent -------------------------------------------


def test_every_named_type_has_a_schema_and_nothing_else(registry: SchemaRegistry) -> None:
    assert set(registry.event_types) == set(ALL_TYPES)


@pytest.mark.parametrize("path", sorted(REPO_SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_schema_file_metadata(path: Path) -> None:
    document = json.loads(path.read_text())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"{SCHEMA_ID_BASE}{path.name}"
    assert document["title"]
    assert document["description"]
    if path.stem in ALL_TYPES:
        assert document["additionalProperties"] is False
        assert document["type"] == "object"
        assert len(document["examples"]) >= 1


def test_readme_describes_every_type() -> None:
    readme = (REPO_SCHEMAS / "README.md").read_text()
    for event_type in ALL_TYPES:
        assert f"`{event_type}`" in readme


@pytest.mark.parametrize(("event_type", "data"), list(iter_examples(SchemaRegistry(REPO_SCHEMAS))))
def test_every_example_is_valid(registry: SchemaRegistry, event_type: str, data: object) -> None:
    registry.validate(event_type, data)


def test_every_type_has_examples(registry: SchemaRegistry) -> None:
    assert {event_type for event_type, _ in iter_examples(registry)} == set(ALL_TYPES)


@pytest.mark.parametrize("status", STATUSES)
def test_outcome_status_is_constant(registry: SchemaRegistry, status: str) -> None:
    event_type = f"paystream.transaction.{status}.v1"
    assert example(registry, event_type)["status"] == status
    data = example(registry, event_type)
    data["status"] = "succeeded" if status != "succeeded" else "failed"
    assert f"$.status: '{status}' was expected" in violation(registry, event_type, data)


# --- bad examples, every type -------------------------------------------------------------

AMOUNT_TYPES = (*COMMANDS, *OUTCOMES)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_missing_required_field(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    del data["tenant_id"]
    assert "$: 'tenant_id' is a required property" in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_extra_property(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["card_number"] = "4242424242424242"
    reason = violation(registry, event_type, data)
    assert "Additional properties are not allowed ('card_number' was unexpected)" in reason


@pytest.mark.parametrize("event_type", AMOUNT_TYPES)
def test_float_amount(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["amount_minor"] = 100.5
    assert "$.amount_minor: 100.5 is not of type 'integer'" in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", AMOUNT_TYPES)
@pytest.mark.parametrize("amount", [0, -100])
def test_non_positive_amount(registry: SchemaRegistry, event_type: str, amount: int) -> None:
    data = example(registry, event_type)
    data["amount_minor"] = amount
    reason = violation(registry, event_type, data)
    assert f"$.amount_minor: {amount} is less than the minimum of 1" in reason


@pytest.mark.parametrize("event_type", AMOUNT_TYPES)
def test_lowercase_currency(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["currency"] = "eur"
    assert "$.currency: 'eur' does not match '^[A-Z]{3}$'" in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_bad_uuid(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["tenant_id"] = "tenant-1"
    assert "$.tenant_id: 'tenant-1' is not a 'uuid'" in violation(registry, event_type, data)


@pytest.mark.parametrize(
    ("event_type", "field"),
    [
        *((t, "requested_at") for t in COMMANDS),
        (CALLBACK, "received_at"),
        *((t, "occurred_at") for t in OUTCOMES),
    ],
)
@pytest.mark.parametrize("value", ["2025-13-01T00:00:00Z", "2025-01-15 10:30", "yesterday"])
def test_bad_date_time(registry: SchemaRegistry, event_type: str, field: str, value: str) -> None:
    data = example(registry, event_type)
    data[field] = value
    assert f"$.{field}: '{value}' is not a 'date-time'" in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_not_an_object(registry: SchemaRegistry, event_type: str) -> None:
    assert "$: [] is not of type 'object'" in violation(registry, event_type, [])


# --- type-specific rules ------------------------------------------------------------------


@pytest.mark.parametrize("event_type", COMMANDS)
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("country", "de", "$.country: 'de' does not match '^[A-Z]{2}$'"),
        ("country", "DEU", "$.country: 'DEU' does not match '^[A-Z]{2}$'"),
        ("account_id", "a b", "$.account_id: 'a b' does not match"),
        ("account_id", "x" * 65, "$.account_id: 'xxxxx"),
        ("idempotency_key", "", "$.idempotency_key: '' should be non-empty"),
        ("idempotency_key", "k" * 256, "is too long"),
        ("payload_hash", "ABC", "$.payload_hash: 'ABC' does not match '^[0-9a-f]{64}$'"),
        ("metadata", {"k": 1}, "$.metadata.k: 1 is not of type 'string'"),
        ("amount_minor", "100.00", "$.amount_minor: '100.00' is not of type 'integer'"),
        ("amount_minor", True, "$.amount_minor: True is not of type 'integer'"),
    ],
)
def test_command_field_rules(
    registry: SchemaRegistry, event_type: str, field: str, value: object, expected: str
) -> None:
    data = example(registry, event_type)
    data[field] = value
    assert expected in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", COMMANDS)
def test_metadata_is_bounded(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["metadata"] = {f"k{i}": "v" for i in range(33)}
    reason = violation(registry, event_type, data)
    assert "$.metadata: {'k0': 'v'" in reason
    assert "'k32': 'v'} has too many properties" in reason


def test_deposit_optional_fields(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[0])
    del data["payment_method"], data["metadata"]
    registry.validate(COMMANDS[0], data)


def test_withdrawal_requires_destination(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[1])
    del data["destination"]
    assert "$: 'destination' is a required property" in violation(registry, COMMANDS[1], data)


def test_deposit_has_no_destination(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[0])
    data["destination"] = example(registry, COMMANDS[1])["destination"]
    assert "('destination' was unexpected)" in violation(registry, COMMANDS[0], data)


def test_withdrawal_destination_never_carries_cleartext(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[1])
    data["destination"]["iban"] = "DE89370400440532013000"
    reason = violation(registry, COMMANDS[1], data)
    assert "$.destination: Additional properties are not allowed ('iban' was unexpected)" in reason


def test_withdrawal_ciphertext_is_base64(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[1])
    data["destination"]["ciphertext"] = "DE89 3704 0044"
    assert "$.destination.ciphertext: 'DE89 3704 0044' does not match" in violation(
        registry, COMMANDS[1], data
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "body_encoding",
            "latin-1",
            "$.body_encoding: 'latin-1' is not one of ['utf-8', 'base64']",
        ),
        ("headers", {"x-sig": 1}, "$.headers['x-sig']: 1 is not of type 'string'"),
        ("body", {"id": "evt"}, "$.body: {'id': 'evt'} is not of type 'string'"),
        ("gateway", None, "$.gateway: None is not of type 'string'"),
    ],
)
def test_callback_rules(registry: SchemaRegistry, field: str, value: object, expected: str) -> None:
    data = example(registry, CALLBACK)
    data[field] = value
    assert expected in violation(registry, CALLBACK, data)


@pytest.mark.parametrize("status", ["failed", "rejected"])
def test_failure_required_for_failed_and_rejected(registry: SchemaRegistry, status: str) -> None:
    event_type = f"paystream.transaction.{status}.v1"
    data = example(registry, event_type)
    data["failure"] = None
    assert "$.failure: None is not of type 'object'" in violation(registry, event_type, data)
    data["failure"] = {"code": "declined"}
    assert "$.failure: 'message' is a required property" in violation(registry, event_type, data)


@pytest.mark.parametrize("status", ["processing", "pending", "unknown", "action_required"])
def test_failure_nullable_otherwise(registry: SchemaRegistry, status: str) -> None:
    event_type = f"paystream.transaction.{status}.v1"
    data = example(registry, event_type)
    data["failure"] = None
    data["gateway"] = None
    data["provider_reference"] = None
    registry.validate(event_type, data)
    data["failure"] = {"code": "timeout", "message": "first attempt timed out"}
    registry.validate(event_type, data)


def test_succeeded_has_no_failure(registry: SchemaRegistry) -> None:
    event_type = "paystream.transaction.succeeded.v1"
    data = example(registry, event_type)
    data["failure"] = {"code": "x", "message": "y"}
    assert "$.failure: {'code': 'x', 'message': 'y'} is not of type 'null'" in violation(
        registry, event_type, data
    )


def test_action_required_needs_redirect_url(registry: SchemaRegistry) -> None:
    event_type = "paystream.transaction.action_required.v1"
    data = example(registry, event_type)
    data["redirect_url"] = "not a url"
    assert "$.redirect_url: 'not a url' is not a 'uri'" in violation(registry, event_type, data)
    del data["redirect_url"]
    assert "$: 'redirect_url' is a required property" in violation(registry, event_type, data)


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "action_required"])
def test_redirect_url_only_on_action_required(registry: SchemaRegistry, status: str) -> None:
    event_type = f"paystream.transaction.{status}.v1"
    data = example(registry, event_type)
    data["redirect_url"] = "https://example.com/3ds"
    assert "('redirect_url' was unexpected)" in violation(registry, event_type, data)


@pytest.mark.parametrize("event_type", OUTCOMES)
def test_outcome_version_and_type(registry: SchemaRegistry, event_type: str) -> None:
    data = example(registry, event_type)
    data["version"] = 0
    assert "$.version: 0 is less than the minimum of 1" in violation(registry, event_type, data)
    data = example(registry, event_type)
    data["type"] = "refund"
    assert "$.type: 'refund' is not one of ['deposit', 'withdrawal']" in violation(
        registry, event_type, data
    )


# --- registry behaviour -------------------------------------------------------------------


def test_unknown_event_type(registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownEventType) as caught:
        registry.validate("paystream.refund.requested.v1", {})
    assert caught.value.event_type == "paystream.refund.requested.v1"
    assert "unknown event type 'paystream.refund.requested.v1'" in caught.value.reason


def test_shared_definitions_are_not_an_event_type(registry: SchemaRegistry) -> None:
    assert "paystream.transaction.common" not in registry
    with pytest.raises(UnknownEventType):
        registry.validate("paystream.transaction.common", {})


def test_reason_lists_several_errors_in_path_order(registry: SchemaRegistry) -> None:
    data = example(registry, COMMANDS[0])
    data["currency"] = "eur"
    data["amount_minor"] = -1
    reason = violation(registry, COMMANDS[0], data)
    assert reason.startswith("data does not match schema paystream.deposit.requested.v1: ")
    assert reason.index("$.amount_minor") < reason.index("$.currency")


def test_reason_is_bounded(registry: SchemaRegistry) -> None:
    data = example(registry, CALLBACK)
    data["gateway"] = "X" * 10_000
    assert len(violation(registry, CALLBACK, data)) < 1_000


def test_env_var_selects_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "paystream.thing.happened.v1.json").write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": f"{SCHEMA_ID_BASE}paystream.thing.happened.v1.json",
                "type": "object",
            }
        )
    )
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    assert find_schemas_dir() == tmp_path
    assert SchemaRegistry().event_types == ("paystream.thing.happened.v1",)


def test_default_directory_is_the_repo_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEMAS_DIR_ENV, raising=False)
    assert find_schemas_dir() == REPO_SCHEMAS


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemasDirectoryNotFound, match="does not exist"):
        SchemaRegistry(tmp_path / "nope")


def test_schema_with_wrong_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "paystream.thing.happened.v1.json").write_text(
        json.dumps({"$id": "https://example.com/x.json", "type": "object"})
    )
    with pytest.raises(SchemaError, match=r"\$id must be"):
        SchemaRegistry(tmp_path)


def test_invalid_schema_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "paystream.thing.happened.v1.json").write_text(
        json.dumps({"$id": f"{SCHEMA_ID_BASE}paystream.thing.happened.v1.json", "type": 12})
    )
    with pytest.raises(SchemaError):
        SchemaRegistry(tmp_path)


def test_refs_resolve_offline_only(tmp_path: Path) -> None:
    """A $ref to a schema that is not in the directory fails; nothing is fetched."""
    (tmp_path / "paystream.thing.happened.v1.json").write_text(
        json.dumps(
            {
                "$id": f"{SCHEMA_ID_BASE}paystream.thing.happened.v1.json",
                "properties": {"a": {"$ref": "https://example.com/elsewhere.json"}},
            }
        )
    )
    with pytest.raises(SchemaError, match="Unresolvable"):
        SchemaRegistry(tmp_path)
