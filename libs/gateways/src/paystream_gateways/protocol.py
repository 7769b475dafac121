"""The one interface every provider adapter implements, and the typed values it speaks.

A call either returns an `Outcome` (the provider answered and we know what it did) or raises
`NotExecuted` / `Ambiguous` (see errors.py). That split is what makes fallback safe: only a
`NotExecuted` error or a `Declined(retry_elsewhere=True)` may send the money elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from paystream_core.ids import attempt_idempotency_key
from paystream_core.money import Money
from paystream_core.outcomes import (
    ActionRequired,
    Declined,
    NotFound,
    Outcome,
    Pending,
    StatusResult,
    Succeeded,
)
from paystream_core.statuses import TransactionType

# Metadata keys adapters send to providers; a caller's metadata cannot override them.
RESERVED_METADATA_PREFIX = "paystream_"

# The answers a call returns are the core's values; adapters import them from here.
__all__ = [
    "ActionRequired",
    "CallbackEvent",
    "ClientOptions",
    "Declined",
    "Gateway",
    "NotFound",
    "Outcome",
    "PaymentRequest",
    "Pending",
    "StatusQuery",
    "StatusResult",
    "Succeeded",
    "header",
]


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One attempt at moving money through one gateway.

    `idempotency_key` is ours (`attempt_idempotency_key`), sent on every try of the attempt,
    so a retry after a timeout can never execute twice at the provider.
    """

    idempotency_key: str
    transaction_id: uuid.UUID
    account_id: str
    amount_minor: int
    currency: str
    country: str
    payment_method: str | None = None
    # Withdrawals only. Cleartext bank details: kept out of repr so they never reach a log.
    destination: Mapping[str, str] | None = field(default=None, repr=False)
    metadata: Mapping[str, str] = field(default_factory=dict)
    return_url: str | None = None
    tenant_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        Money(self.amount_minor, self.currency)  # raises MoneyError on a bad currency/type
        if self.amount_minor <= 0:
            raise ValueError("amount_minor must be positive")
        if not self.idempotency_key:
            raise ValueError("idempotency_key is required")

    @classmethod
    def for_attempt(
        cls,
        transaction_id: uuid.UUID,
        attempt_seq: int,
        *,
        account_id: str,
        amount_minor: int,
        currency: str,
        country: str,
        payment_method: str | None = None,
        destination: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        return_url: str | None = None,
        tenant_id: uuid.UUID | None = None,
    ) -> PaymentRequest:
        """A request whose key is derived from the transaction and the attempt number."""
        return cls(
            idempotency_key=attempt_idempotency_key(transaction_id, attempt_seq),
            transaction_id=transaction_id,
            account_id=account_id,
            amount_minor=amount_minor,
            currency=currency,
            country=country,
            payment_method=payment_method,
            destination=destination,
            metadata=dict(metadata or {}),
            return_url=return_url,
            tenant_id=tenant_id,
        )

    @property
    def money(self) -> Money:
        return Money(self.amount_minor, self.currency)

    def provider_metadata(self) -> dict[str, str]:
        """Caller metadata plus our references, which providers echo back in callbacks."""
        meta = {
            k: v for k, v in self.metadata.items() if not k.startswith(RESERVED_METADATA_PREFIX)
        }
        meta["paystream_reference"] = self.idempotency_key
        meta["paystream_transaction_id"] = str(self.transaction_id)
        meta["paystream_account_id"] = self.account_id
        return meta


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Look up what a provider did with one attempt, by our key (and its id, when known)."""

    kind: TransactionType
    idempotency_key: str
    provider_reference: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """A verified provider notification, reduced to what the state machine needs."""

    provider: str
    event_id: str  # the provider's id: the dedupe key for duplicates and replays
    event_type: str  # the provider's own name, for logs and anomaly reports
    kind: TransactionType
    provider_reference: str
    reference: str | None  # our attempt key, when the provider echoes it back
    outcome: Outcome
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Transport settings every adapter honours."""

    connect_timeout_s: float = 3.0
    # Once the request is sent, a timeout is ambiguous: keep it above the provider's p99.
    read_timeout_s: float = 15.0
    callback_tolerance_s: int = 300
    max_response_bytes: int = 1_000_000
    # Called with the provider's name each time a request is sent again on another
    # connection because the kept-alive one it was written on had been closed
    # (`aiohttp_pool`): a metric, so operators see that churn.
    on_resend: Callable[[str], None] | None = None


class Gateway(Protocol):
    """What the worker calls. Adapters never retry on their own: retries, breakers and
    fallback belong to the caller, which knows the attempt's history."""

    @property
    def provider(self) -> str: ...

    async def deposit(self, request: PaymentRequest) -> Outcome: ...

    async def withdraw(self, request: PaymentRequest) -> Outcome: ...

    async def status(self, query: StatusQuery) -> StatusResult: ...

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> None:
        """Raise CallbackRejected unless `body` is signed by this connection's secret and
        recent. Runs at the ingress, before the raw body is published."""
        ...

    def parse_callback(self, body: bytes) -> CallbackEvent:
        """Parse an already verified body (the worker re-reads it from Kafka later, when the
        signature timestamp may be stale). Raises CallbackRejected when malformed."""
        ...

    async def aclose(self) -> None: ...


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over any mapping (HTTP header names are)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None
