"""The commands on `<prefix>.commands`: a deposit or a withdrawal to execute.

The ingest API publishes them; other services may produce them straight to Kafka. The
record key (and `partitionkey`) is the account id, so one account's commands stay in order
on one partition. `payload_hash` lets a worker tell a redelivery (same hash) from a reused
Idempotency-Key with another body (the first one stored wins).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from paystream_core import limits
from paystream_core.countries import ISO_COUNTRIES
from paystream_core.ids import PAYSTREAM_NAMESPACE
from paystream_core.statuses import TransactionType
from paystream_messaging.cloudevents_codec import Event, InvalidEvent
from paystream_messaging.timestamps import parse_timestamp, render_timestamp


@dataclass(frozen=True, slots=True)
class SealedDestination:
    """Payout bank details as they travel: AES-256-GCM ciphertext, its key id, a mask."""

    ciphertext: bytes = field(repr=False)
    key_id: str
    masked: str

    def data(self) -> dict[str, str]:
        return {
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "key_id": self.key_id,
            "masked": self.masked,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDeposit:
    """Collect `amount_minor` of `currency` into `account_id` (`POST /v1/deposits`)."""

    EVENT_TYPE: ClassVar[str] = "paystream.deposit.requested.v1"
    KIND: ClassVar[TransactionType] = TransactionType.DEPOSIT

    transaction_id: uuid.UUID
    tenant_id: uuid.UUID
    idempotency_key: str
    payload_hash: str
    account_id: str
    country: str
    amount_minor: int
    currency: str
    requested_at: datetime
    payment_method: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def event_id(self) -> str:
        """Stable per request: a retried POST republishes the same CloudEvent id."""
        seed = f"command|{self.transaction_id}|{self.payload_hash}"
        return str(uuid.uuid5(PAYSTREAM_NAMESPACE, seed))

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "transaction_id": str(self.transaction_id),
            "tenant_id": str(self.tenant_id),
            "idempotency_key": self.idempotency_key,
            "payload_hash": self.payload_hash,
            "account_id": self.account_id,
            "country": self.country,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "requested_at": render_timestamp(self.requested_at),
        }
        if self.payment_method is not None:
            data["payment_method"] = self.payment_method
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        return data

    def to_event(
        self, *, source: str, time: datetime | None = None, traceparent: str | None = None
    ) -> Event:
        return Event(
            id=self.event_id(),
            source=source,
            type=self.EVENT_TYPE,
            time=time or self.requested_at,
            tenant_id=str(self.tenant_id),
            partition_key=self.account_id,
            data=self.data(),
            traceparent=traceparent,
        )

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "transaction_id": uuid.UUID(data["transaction_id"]),
            "tenant_id": uuid.UUID(data["tenant_id"]),
            "idempotency_key": data["idempotency_key"],
            "payload_hash": data["payload_hash"],
            "account_id": data["account_id"],
            "country": data["country"],
            "amount_minor": data["amount_minor"],
            "currency": data["currency"],
            "requested_at": parse_timestamp(data["requested_at"]),
            "payment_method": data.get("payment_method"),
            "metadata": dict(data.get("metadata") or {}),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWithdrawal(RequestDeposit):
    """Pay `amount_minor` of `currency` out of `account_id` to `destination`."""

    EVENT_TYPE: ClassVar[str] = "paystream.withdrawal.requested.v1"
    KIND: ClassVar[TransactionType] = TransactionType.WITHDRAWAL

    destination: SealedDestination

    def data(self) -> dict[str, Any]:
        data = RequestDeposit.data(self)
        data["destination"] = self.destination.data()
        return data


Command = RequestDeposit | RequestWithdrawal
COMMAND_TYPES: Mapping[str, type[RequestDeposit]] = {
    RequestDeposit.EVENT_TYPE: RequestDeposit,
    RequestWithdrawal.EVENT_TYPE: RequestWithdrawal,
}


def command_from_event(event: Event) -> Command:
    """The command in a decoded (schema-valid) event; InvalidEvent if it is not one, or if
    it holds what storage and the ledger cannot (`check_limits`)."""
    command: Command
    if event.type == RequestDeposit.EVENT_TYPE:
        command = RequestDeposit(**RequestDeposit._fields(event.data))
    elif event.type == RequestWithdrawal.EVENT_TYPE:
        destination = event.data["destination"]
        try:
            ciphertext = base64.b64decode(destination["ciphertext"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent("destination ciphertext is not base64") from None
        sealed = SealedDestination(ciphertext, destination["key_id"], destination["masked"])
        command = RequestWithdrawal(**RequestDeposit._fields(event.data), destination=sealed)
    else:
        raise InvalidEvent(f"{event.type} is not a command this worker handles")
    check_limits(command)
    return command


def check_limits(command: Command) -> None:
    """InvalidEvent unless the command fits storage and the ledger: a known currency and
    country, an amount within its currency's ceiling, no control character or lone
    surrogate in any string. The ingest API refuses all of this with 422; a command
    produced straight to Kafka meets the same rules here, before anything is stored or
    any provider is called, so the worker dead-letters it with this reason."""
    try:
        if command.country not in ISO_COUNTRIES:
            raise limits.LimitError(f"country: {command.country!r} is not an ISO 3166-1 code")
        limits.check_amount(command.amount_minor, command.currency)
        texts = [
            ("idempotency_key", command.idempotency_key),
            ("account_id", command.account_id),
            ("payment_method", command.payment_method or ""),
        ]
        for key, value in command.metadata.items():
            texts += [("metadata key", key), (f"metadata.{key}", value)]
        if isinstance(command, RequestWithdrawal):
            texts += [
                ("destination.key_id", command.destination.key_id),
                ("destination.masked", command.destination.masked),
            ]
        for field_name, text in texts:
            limits.check_text(field_name, text)
    except limits.LimitError as exc:
        raise InvalidEvent(f"beyond limits: {exc}") from None
