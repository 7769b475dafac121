"""The `paystream.callback.received.v1` event: a verified provider callback on Kafka.

The ingress publishes the raw body (never re-serialised: the worker re-parses exactly what
the provider signed) and the headers that matter; the record key is the provider's payment
reference, so every callback about one payment lands on one partition, in arrival order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from paystream_core.ids import PAYSTREAM_NAMESPACE
from paystream_messaging.cloudevents_codec import Event, InvalidEvent

EVENT_TYPE = "paystream.callback.received.v1"


@dataclass(frozen=True, slots=True)
class CallbackReceived:
    gateway: str
    connection_id: uuid.UUID
    tenant_id: uuid.UUID
    received_at: datetime
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def encoded_body(self) -> tuple[str, str]:
        """(body, body_encoding) as the schema carries them."""
        # NUL is valid UTF-8 but no PostgreSQL text column can hold it (the callback log):
        # such a body travels, and is stored, as base64 like any other non-text body.
        if b"\x00" not in self.body:
            try:
                return self.body.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                pass
        return base64.b64encode(self.body).decode(), "base64"

    def event_id(self) -> str:
        """The same delivery of the same body gets the same CloudEvent id (provider retries
        of one callback are one event to CloudEvents-level deduplication too)."""
        digest = hashlib.sha256(self.body).hexdigest()
        return str(uuid.uuid5(PAYSTREAM_NAMESPACE, f"callback|{self.connection_id}|{digest}"))

    def to_event(self, *, source: str, partition_key: str) -> Event:
        body, encoding = self.encoded_body()
        data = {
            "gateway": self.gateway,
            "connection_id": str(self.connection_id),
            "tenant_id": str(self.tenant_id),
            "received_at": self.received_at.isoformat().replace("+00:00", "Z"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "body_encoding": encoding,
        }
        return Event(
            id=self.event_id(),
            source=source,
            type=EVENT_TYPE,
            time=self.received_at,
            tenant_id=str(self.tenant_id),
            partition_key=partition_key,
            data=data,
        )

    @classmethod
    def from_event(cls, event: Event) -> CallbackReceived:
        """The callback in a decoded (schema-valid) event; InvalidEvent if it is not one."""
        if event.type != EVENT_TYPE:
            raise InvalidEvent(f"{event.type} is not {EVENT_TYPE}")
        data = event.data
        return cls(
            gateway=data["gateway"],
            connection_id=uuid.UUID(data["connection_id"]),
            tenant_id=uuid.UUID(data["tenant_id"]),
            received_at=datetime.fromisoformat(data["received_at"].replace("Z", "+00:00")),
            body=decode_body(data["body"], data["body_encoding"]),
            headers=dict(data["headers"]),
        )


def decode_body(body: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return body.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent("body is not valid base64") from None
    raise InvalidEvent(f"unknown body_encoding {encoding!r}")
