"""The outcome events on `<prefix>.outcomes`: `paystream.transaction.<status>.v1`, one per
transaction version, published through the transactional outbox.

Consumers keep the newest `version` per transaction and drop the rest; the CloudEvent id is
derived from (transaction, version), so a republished outcome has the same id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from paystream_core.ids import outcome_event_id
from paystream_core.records import TransactionRecord
from paystream_core.statuses import Status, TransactionType
from paystream_messaging.cloudevents_codec import Event, InvalidEvent
from paystream_messaging.timestamps import parse_timestamp, render_timestamp

MAX_FAILURE_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionOutcome:
    """The fields every outcome carries; one subclass per status."""

    EVENT_TYPE: ClassVar[str]
    STATUS: ClassVar[Status]

    transaction_id: uuid.UUID
    tenant_id: uuid.UUID
    account_id: str
    type: TransactionType
    version: int
    amount_minor: int
    currency: str
    gateway: str | None
    provider_reference: str | None
    failure: Failure | None
    occurred_at: datetime

    @property
    def status(self) -> Status:
        return self.STATUS

    def event_id(self) -> uuid.UUID:
        return outcome_event_id(self.transaction_id, self.version)

    def data(self) -> dict[str, Any]:
        return {
            "transaction_id": str(self.transaction_id),
            "tenant_id": str(self.tenant_id),
            "account_id": self.account_id,
            "type": self.type.value,
            "status": self.STATUS.value,
            "version": self.version,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "gateway": self.gateway,
            "provider_reference": self.provider_reference,
            "failure": (
                {"code": self.failure.code, "message": self.failure.message}
                if self.failure is not None
                else None
            ),
            "occurred_at": render_timestamp(self.occurred_at),
        }

    def to_event(self, *, source: str) -> Event:
        return Event(
            id=str(self.event_id()),
            source=source,
            type=self.EVENT_TYPE,
            time=self.occurred_at,
            tenant_id=str(self.tenant_id),
            partition_key=self.account_id,
            data=self.data(),
        )

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        failure = data.get("failure")
        return {
            "transaction_id": uuid.UUID(data["transaction_id"]),
            "tenant_id": uuid.UUID(data["tenant_id"]),
            "account_id": data["account_id"],
            "type": TransactionType(data["type"]),
            "version": data["version"],
            "amount_minor": data["amount_minor"],
            "currency": data["currency"],
            "gateway": data.get("gateway"),
            "provider_reference": data.get("provider_reference"),
            "failure": Failure(failure["code"], failure["message"]) if failure else None,
            "occurred_at": parse_timestamp(data["occurred_at"]),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionProcessing(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.processing.v1"
    STATUS: ClassVar[Status] = Status.PROCESSING


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionPending(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.pending.v1"
    STATUS: ClassVar[Status] = Status.PENDING


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionActionRequired(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.action_required.v1"
    STATUS: ClassVar[Status] = Status.ACTION_REQUIRED

    redirect_url: str | None

    def data(self) -> dict[str, Any]:
        return {**TransactionOutcome.data(self), "redirect_url": self.redirect_url}


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionUnknown(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.unknown.v1"
    STATUS: ClassVar[Status] = Status.UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionSucceeded(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.succeeded.v1"
    STATUS: ClassVar[Status] = Status.SUCCEEDED


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionFailed(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.failed.v1"
    STATUS: ClassVar[Status] = Status.FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionRejected(TransactionOutcome):
    EVENT_TYPE: ClassVar[str] = "paystream.transaction.rejected.v1"
    STATUS: ClassVar[Status] = Status.REJECTED


OUTCOME_TYPES: Mapping[Status, type[TransactionOutcome]] = {
    cls.STATUS: cls
    for cls in (
        TransactionProcessing,
        TransactionPending,
        TransactionActionRequired,
        TransactionUnknown,
        TransactionSucceeded,
        TransactionFailed,
        TransactionRejected,
    )
}
_BY_EVENT_TYPE = {cls.EVENT_TYPE: cls for cls in OUTCOME_TYPES.values()}
TERMINAL_EVENT_TYPES = frozenset(
    cls.EVENT_TYPE for status, cls in OUTCOME_TYPES.items() if status.terminal
)


def outcome_of(
    txn: TransactionRecord, *, at: datetime, redirect_url: str | None = None
) -> TransactionOutcome:
    """The outcome event of the transaction's current version."""
    failure = None
    if txn.failure_code and txn.status in (Status.FAILED, Status.REJECTED):
        message = (txn.failure_message or txn.failure_code)[:MAX_FAILURE_MESSAGE]
        failure = Failure(txn.failure_code, message)
    fields: dict[str, Any] = {
        "transaction_id": txn.id,
        "tenant_id": txn.tenant_id,
        "account_id": txn.account_id,
        "type": txn.type,
        "version": txn.version,
        "amount_minor": txn.amount_minor,
        "currency": txn.currency,
        "gateway": txn.gateway_code,
        "provider_reference": txn.provider_reference,
        "failure": failure,
        "occurred_at": at,
    }
    if txn.status == Status.ACTION_REQUIRED:
        return TransactionActionRequired(**fields, redirect_url=redirect_url)
    try:
        return OUTCOME_TYPES[txn.status](**fields)
    except KeyError:
        raise ValueError(f"a {txn.status} transaction has no outcome event") from None


def outcome_from_event(event: Event) -> TransactionOutcome:
    """The outcome in a decoded (schema-valid) event; InvalidEvent if it is not one."""
    cls = _BY_EVENT_TYPE.get(event.type)
    if cls is None:
        raise InvalidEvent(f"{event.type} is not a transaction outcome")
    fields = TransactionOutcome._fields(event.data)
    if cls is TransactionActionRequired:
        return TransactionActionRequired(**fields, redirect_url=event.data.get("redirect_url"))
    return cls(**fields)
