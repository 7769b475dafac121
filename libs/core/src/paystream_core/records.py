"""The stored state the payment rules read: a transaction and its attempts, as values.

The storage port (`paystream_core.ports`) returns and accepts these; the rules never see a
database row or an ORM object, so they run in unit tests without PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from paystream_core.statuses import AttemptStatus, Status, TransactionType


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    id: uuid.UUID
    tenant_id: uuid.UUID
    account_id: str
    type: TransactionType
    status: Status
    version: int
    amount_minor: int
    currency: str
    country: str
    idempotency_key: str
    payload_hash: str
    payment_method: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Withdrawals: the sealed bank details (AES-GCM, bound to tenant and transaction).
    destination_ciphertext: bytes | None = field(default=None, repr=False)
    destination_key_id: str | None = None
    destination_masked: str | None = None
    gateway_code: str | None = None
    provider_reference: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call (and its retries, all with `idempotency_key`) to one gateway."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    transaction_id: uuid.UUID
    seq: int
    gateway_code: str
    connection_id: uuid.UUID
    idempotency_key: str
    status: AttemptStatus
    provider_reference: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Why this gateway was tried then (`paystream_core.ranking`), for operators; None for
    # attempts recorded before routing kept it.
    route_reason: str | None = None
