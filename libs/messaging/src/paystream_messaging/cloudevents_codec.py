"""CloudEvents 1.0 on Kafka: our typed ``Event`` <-> Kafka record (key, value, headers).

Output is always binary content mode: ``ce_*`` headers, ``content-type: application/json``,
the JSON ``data`` as the value and the account id (``partitionkey``) as the key. Input may be
binary or structured mode (``content-type: application/cloudevents+json``).

The conversion itself is done by the cloudevents 2.x SDK (``cloudevents.core.bindings.kafka``).
Its lenient defaults are wrong for a payment processor, so a few checks run before it:

* ``CloudEvent(...)`` silently fills in a missing ``id`` (random uuid4), ``time`` (now) and
  ``specversion`` ("1.0"), so required attributes are checked on the raw input first.
* ``JSONFormat.read_data`` swallows JSON errors and returns the text instead, so a value that
  is not JSON would otherwise surface as "data is a string".
* ``from_binary``/``from_structured`` overwrite the ``partitionkey`` attribute with the record
  key, so a mismatch between the two is detected before the SDK hides it.
* ``KafkaMessage.headers`` is a ``dict``; Kafka allows repeated headers, which are rejected
  here rather than letting the last one win.

Every decoding failure raises a subclass of ``InvalidEvent`` whose ``reason`` is meant to be
stored on a dead-letter record and read by an operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse  # type: ignore[import-untyped]  # the SDK's parser

from paystream_messaging.schemas import SchemaRegistry, SchemaViolation, UnknownEventType

__all__ = [
    "DATA_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "DataNotObject",
    "Event",
    "EventNotJSON",
    "EventSchemaMismatch",
    "InvalidAttribute",
    "InvalidEvent",
    "KafkaRecord",
    "MissingAttribute",
    "UnknownType",
    "UnsupportedSpecVersion",
    "decode",
    "encode",
]

SPECVERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
CONTENT_TYPE_HEADER: Final = "content-type"
CE_PREFIX: Final = "ce_"
TENANT_EXT: Final = "tenantid"
PARTITION_EXT: Final = "partitionkey"
TRACE_EXT: Final = "traceparent"
# What we require on input, in the order reported. The CE spec makes "time" optional, but the
# SDK would substitute "now", which is a lie about when a payment event happened.
REQUIRED_ATTRIBUTES: Final = ("specversion", "id", "source", "type", "time")
_FORMAT: Final = JSONFormat()


# --- errors --------------------------------------------------------------------------------


class InvalidEvent(ValueError):
    """A Kafka record that is not a valid paystream CloudEvent. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EventNotJSON(InvalidEvent):
    """The value (binary: data; structured: the whole event) is not valid JSON."""


class MissingAttribute(InvalidEvent):
    """A required CloudEvents attribute or paystream extension is absent or empty."""

    def __init__(self, attribute: str, reason: str) -> None:
        self.attribute = attribute
        super().__init__(reason)


class InvalidAttribute(InvalidEvent):
    """An attribute is present but unusable (wrong type, bad time, conflicting values...)."""


class UnsupportedSpecVersion(InvalidEvent):
    """``specversion`` is not ``1.0``."""


class UnknownType(InvalidEvent):
    """``type`` has no schema in the registry."""


class DataNotObject(InvalidEvent):
    """``data`` is absent or not a JSON object."""


class EventSchemaMismatch(InvalidEvent):
    """``data`` does not match the schema of the event's ``type``."""

    def __init__(self, violation: SchemaViolation) -> None:
        self.violation = violation
        super().__init__(violation.reason)


# --- our typed view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A paystream CloudEvent. ``partition_key`` is the account id and the Kafka key."""

    id: str
    source: str
    type: str
    time: datetime
    tenant_id: str
    partition_key: str
    data: dict[str, Any] = field(hash=False)
    traceparent: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "source", "type", "tenant_id", "partition_key"):
            if not getattr(self, name):
                raise ValueError(f"Event.{name} must not be empty")
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("Event.time must be timezone-aware")


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What to hand to the producer (or what a consumer got)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(hash=False)


# --- encode --------------------------------------------------------------------------------


def encode(event: Event, registry: SchemaRegistry, *, validate: bool = True) -> KafkaRecord:
    """Validate ``event.data`` against its schema and render a binary-mode record.

    Raises ``UnknownEventType`` / ``SchemaViolation`` (from the registry) or ``InvalidEvent``
    if the tenant in the data contradicts ``event.tenant_id``: that is a producer bug.
    ``validate=False`` is for the outbox relay, whose rows were validated when written.
    """
    if validate:
        registry.validate(event.type, event.data)
        _check_tenant(event.tenant_id, event.data)
    attributes: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
        "datacontenttype": DATA_CONTENT_TYPE,
        TENANT_EXT: event.tenant_id,
        PARTITION_EXT: event.partition_key,
    }
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.traceparent is not None:
        attributes[TRACE_EXT] = event.traceparent
    message = kafka.to_binary(CloudEvent(attributes, dict(event.data)), _FORMAT)
    # the SDK's default key mapper returns the partitionkey extension, as str
    key = message.key if isinstance(message.key, bytes) else str(message.key).encode()
    return KafkaRecord(key=key, value=message.value, headers=list(message.headers.items()))


# --- decode --------------------------------------------------------------------------------


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    registry: SchemaRegistry,
) -> Event:
    """Parse a consumed record (binary or structured mode) into an ``Event``.

    Checks, in order: headers, required attributes, specversion, extensions, record key vs
    ``partitionkey``, JSON, known ``type``, ``data`` is an object, schema, tenant consistency.
    Raises an ``InvalidEvent`` subclass on the first problem found.
    """
    header_map = _header_map(headers or ())
    if value is None:
        raise DataNotObject("record has no value (tombstone); expected a CloudEvent")
    record_key = _text(key, "record key") if key is not None else None
    content_type = header_map.get(CONTENT_TYPE_HEADER, "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("application/cloudevents-batch"):
        raise InvalidAttribute("batched CloudEvents (application/cloudevents-batch) not supported")
    if media_type.startswith("application/cloudevents"):
        if media_type != STRUCTURED_CONTENT_TYPE:
            raise InvalidAttribute(
                f"unsupported structured event format {content_type!r}; "
                f"expected {STRUCTURED_CONTENT_TYPE}"
            )
        return _to_event(_decode_structured(record_key, value), registry)
    return _decode_binary(record_key, value, header_map, registry)


def _header_map(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Lower-cased ce_* and content-type headers as text; other headers are ignored."""
    result: dict[str, str] = {}
    for name, raw in headers:
        lowered = name.lower()
        if not (lowered.startswith(CE_PREFIX) or lowered == CONTENT_TYPE_HEADER):
            continue
        if lowered in result:
            raise InvalidAttribute(f"header {name!r} appears more than once")
        result[lowered] = _text(raw or b"", f"header {name!r}")
    return result


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidAttribute(f"{what} is not valid UTF-8: {exc}") from None


def _decode_binary(
    record_key: str | None, value: bytes, headers: dict[str, str], registry: SchemaRegistry
) -> Event:
    attributes: dict[str, Any] = {
        name[len(CE_PREFIX) :]: text
        for name, text in headers.items()
        if name != CONTENT_TYPE_HEADER
    }
    _check_attributes(attributes, "header ce_")
    _check_partition_key(record_key, attributes.get(PARTITION_EXT), "header ce_partitionkey")
    content_type = headers.get(CONTENT_TYPE_HEADER)
    if content_type is not None and not _FORMAT.JSON_CONTENT_TYPE_PATTERN.match(content_type):
        raise InvalidAttribute(
            f"unsupported content-type {content_type!r}; data must be {DATA_CONTENT_TYPE}"
        )
    # the SDK would return unparsable text as data
    data = _parse_json(value, "data (record value)")
    fast = _as_sdk_would(record_key, value, attributes)
    if fast is not None:
        return _event(fast, data, registry)
    # the SDK keys its input by header name; only our validated subset is handed over
    message = kafka.KafkaMessage(
        headers={name: text.encode() for name, text in headers.items()},
        key=record_key,
        value=value,
    )
    return _to_event(_sdk(lambda: kafka.from_binary(message, _FORMAT, CloudEvent)), registry)


# Extension names the SDK accepts (`CloudEvent._validate_extension_attributes`).
_EXTENSION_NAME: Final = re.compile(r"^[a-z0-9]+$")
_V1_ATTRIBUTES: Final = frozenset(
    ("id", "source", "type", "specversion", "datacontenttype", "dataschema", "subject", "time")
)


def _as_sdk_would(
    record_key: str | None, value: bytes, attributes: dict[str, Any]
) -> dict[str, Any] | None:
    """The attributes `kafka.from_binary` + `CloudEvent` would give a record that passed
    our checks, or None if the SDK might see it otherwise (then it decodes the record and
    says what is wrong). Building and validating the SDK's event cost ~8% of the gateway
    worker's CPU per command, for attributes our checks have mostly checked already."""
    if json.detect_encoding(value) != "utf-8":
        return None  # the SDK decodes the value as UTF-8 text before parsing it
    for name in attributes:
        if name not in _V1_ATTRIBUTES and (name == "data" or not _EXTENSION_NAME.match(name)):
            return None
    if "datacontenttype" in attributes:
        return None  # the SDK lets it and the content-type header override each other
    for name in ("subject", "dataschema"):
        if attributes.get(name) == "":
            return None
    try:
        time = isoparse(attributes["time"])
    except (ValueError, OverflowError):
        return None
    if not time.tzinfo:
        return None
    result = {**attributes, "time": time}
    if record_key is not None:
        result[PARTITION_EXT] = record_key
    return result


def _decode_structured(record_key: str | None, value: bytes) -> BaseCloudEvent:
    document = _parse_json(value, "structured event (record value)")
    if not isinstance(document, dict):
        raise EventNotJSON(f"structured event must be a JSON object, got {_json_type(document)}")
    _check_attributes(document, "")
    partition = document.get(PARTITION_EXT)
    _check_partition_key(
        record_key, partition if isinstance(partition, str) else None, "partitionkey"
    )
    datacontenttype = document.get("datacontenttype")
    if datacontenttype is not None and not (
        isinstance(datacontenttype, str)
        and _FORMAT.JSON_CONTENT_TYPE_PATTERN.match(datacontenttype)
    ):
        raise InvalidAttribute(
            f"unsupported datacontenttype {datacontenttype!r}; data must be {DATA_CONTENT_TYPE}"
        )
    message = kafka.KafkaMessage(
        headers={CONTENT_TYPE_HEADER: STRUCTURED_CONTENT_TYPE.encode()},
        key=record_key,
        value=value,
    )
    # parses the JSON a second time; records are small and this keeps the SDK in charge
    return _sdk(lambda: kafka.from_structured(message, _FORMAT, CloudEvent))


def _check_attributes(attributes: Mapping[str, object], prefix: str) -> None:
    # partitionkey is not listed: it may come from the record key (_check_partition_key)
    for name in (*REQUIRED_ATTRIBUTES, TENANT_EXT):
        if attributes.get(name) in (None, ""):
            kind = "extension" if name == TENANT_EXT else "attribute"
            raise MissingAttribute(
                name, f"missing required CloudEvents {kind} '{name}' ({prefix}{name})"
            )
    for name in (*REQUIRED_ATTRIBUTES, TENANT_EXT, PARTITION_EXT, TRACE_EXT, "subject"):
        found = attributes.get(name)
        if found is not None and not isinstance(found, str):
            raise InvalidAttribute(f"attribute '{name}' must be a string, got {found!r}")
    if attributes["specversion"] != SPECVERSION:
        raise UnsupportedSpecVersion(
            f"unsupported specversion {attributes['specversion']!r}; only '{SPECVERSION}'"
        )


def _check_partition_key(record_key: str | None, attribute: str | None, where: str) -> None:
    if not record_key and not attribute:
        raise MissingAttribute(
            PARTITION_EXT,
            f"missing required CloudEvents extension '{PARTITION_EXT}' "
            f"(neither a record key nor {where})",
        )
    if record_key and attribute and record_key != attribute:
        raise InvalidAttribute(
            f"record key {record_key!r} does not match {PARTITION_EXT} {attribute!r}"
        )


def _sdk(convert: Callable[[], BaseCloudEvent]) -> BaseCloudEvent:
    """Run an SDK conversion, turning its exceptions into ``InvalidEvent``."""
    try:
        return convert()
    except BaseCloudEventException as exc:
        raise InvalidAttribute(f"invalid CloudEvent: {exc}") from None
    except ValueError as exc:  # the only other raiser: dateutil's isoparse on 'time'
        raise InvalidAttribute(f"attribute 'time' is not a valid timestamp: {exc}") from None


def _parse_json(value: bytes, what: str) -> Any:
    if not value.strip():
        raise EventNotJSON(f"{what} is empty; expected JSON")
    try:
        return json.loads(value)
    except UnicodeDecodeError as exc:
        raise EventNotJSON(f"{what} is not JSON: not valid UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise EventNotJSON(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        # The C decoder recurses per level and stops cleanly near a thousand; no event of
        # ours nests beyond a few levels, so the record is bad, not the worker.
        raise EventNotJSON(f"{what} is not JSON paystream can read: nested too deeply") from None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return "binary data (data_base64)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _to_event(ce: BaseCloudEvent, registry: SchemaRegistry) -> Event:
    attributes = {
        "id": ce.get_id(),
        "source": ce.get_source(),
        "type": ce.get_type(),
        "time": ce.get_time(),
        "subject": ce.get_subject(),
        TENANT_EXT: ce.get_extension(TENANT_EXT),
        PARTITION_EXT: ce.get_extension(PARTITION_EXT),
        TRACE_EXT: ce.get_extension(TRACE_EXT),
    }
    return _event(attributes, ce.get_data(), registry)


def _event(attributes: Mapping[str, Any], data: Any, registry: SchemaRegistry) -> Event:
    """`attributes` as the SDK's event holds them (`time` a datetime)."""
    event_type = attributes["type"]
    if event_type not in registry:
        raise UnknownType(f"unknown event type {event_type!r}; no schema in {registry.directory}")
    if not isinstance(data, dict):
        raise DataNotObject(f"data must be a JSON object, got {_json_type(data)}")
    try:
        registry.validate(event_type, data)
    except SchemaViolation as exc:
        raise EventSchemaMismatch(exc) from None
    except UnknownEventType as exc:  # pragma: no cover - checked above
        raise UnknownType(exc.reason) from None
    tenant_id = str(attributes.get(TENANT_EXT))
    _check_tenant(tenant_id, data)
    time = attributes["time"]
    assert time is not None  # required by _check_attributes
    traceparent = attributes.get(TRACE_EXT)
    return Event(
        id=attributes["id"],
        source=attributes["source"],
        type=event_type,
        time=time,
        tenant_id=tenant_id,
        partition_key=str(attributes.get(PARTITION_EXT)),
        data=data,
        traceparent=str(traceparent) if traceparent else None,
        subject=attributes.get("subject"),
    )


def _check_tenant(tenant_id: str, data: Mapping[str, Any]) -> None:
    data_tenant = data.get("tenant_id")
    if data_tenant is not None and data_tenant != tenant_id:
        raise InvalidAttribute(
            f"extension tenantid {tenant_id!r} does not match data.tenant_id {data_tenant!r}"
        )
