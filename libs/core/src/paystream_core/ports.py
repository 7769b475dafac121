"""The storage port: what the workers and the reconciler need from a database.

`paystream_storage.payments` implements it on PostgreSQL (row locks, RLS, set-based SQL);
the unit tests use an in-memory fake, so the payment rules run without servers. A unit is
one database transaction under one tenant's scope: everything it wrote commits together
when the `async with` block ends normally, and nothing does when it raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from paystream_core.ranking import WindowStats
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.routing import Route, TenantConnection
from paystream_core.statuses import TransactionType
from paystream_core.transitions import Transition


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """A provider report that contradicts what we recorded (kept, counted, alerted on)."""

    tenant_id: uuid.UUID
    source: str  # callback | reconciler
    kind: str
    detail: str
    transaction_id: uuid.UUID | None = None
    connection_id: uuid.UUID | None = None
    provider_event_id: str | None = None
    transaction_status: str | None = None
    reported_status: str | None = None


@dataclass(frozen=True, slots=True)
class ParkedCallback:
    """A verified callback whose attempt is not known yet (an orphan): applied once it is."""

    tenant_id: uuid.UUID
    connection_id: uuid.UUID
    gateway_code: str
    provider_event_id: str
    provider_reference: str | None
    reference: str | None
    body: str  # exactly as published by the ingress, in `body_encoding` (utf-8 | base64)
    body_encoding: str
    received_at: datetime
    id: int | None = None
    tries: int = 0
    next_try_at: datetime | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None


@dataclass(frozen=True, slots=True)
class ReconciliationRecord:
    """The reconciler's bookkeeping for one transaction."""

    transaction_id: uuid.UUID
    tenant_id: uuid.UUID
    lookups: int = 0
    next_lookup_at: datetime | None = None
    last_lookup_at: datetime | None = None
    last_result: str | None = None
    reported_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptKey:
    """How a provider report names an attempt: our idempotency key when it echoes it, else
    its own reference; always within the reporting connection."""

    connection_id: uuid.UUID
    reference: str | None
    provider_reference: str | None


class PaymentUnit(Protocol):
    """One database transaction under one tenant (or none: only the cross-tenant queries)."""

    # --- commands -------------------------------------------------------------------------
    async def tenant_exists(self) -> bool: ...

    async def add_accounts(self, accounts: Sequence[tuple[str, str]]) -> None:
        """(account id, country) pairs; existing accounts are left alone."""

    async def add_transactions(self, txns: Sequence[TransactionRecord]) -> set[uuid.UUID]:
        """Insert the new ones; returns the ids inserted (the others existed already)."""
        ...

    async def lock_transactions(
        self, ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, TransactionRecord]:
        """Row-lock and read (in id order, so two units never deadlock)."""
        ...

    async def lock_with_attempts(
        self, ids: Collection[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, TransactionRecord], dict[uuid.UUID, list[AttemptRecord]]]:
        """`lock_transactions`, then every attempt of theirs row-locked, by seq."""
        ...

    async def transaction(self, txn_id: uuid.UUID) -> TransactionRecord | None:
        """Read without a lock."""
        ...

    async def routing(
        self, country: str, kind: TransactionType
    ) -> tuple[list[Route], list[TenantConnection]]:
        """Routes for the country and type, and the tenant's connections."""
        ...

    async def apply(self, transitions: Sequence[Transition], *, source: str) -> set[uuid.UUID]:
        """Apply, in order: ledger legs and balances of each money event, the new rows and
        one outcome event per new version. A hold that the available balance cannot cover
        is refused and its transition not applied: returns those transaction ids."""
        ...

    # --- attempts --------------------------------------------------------------------------
    async def attempts(
        self, txn_ids: Collection[uuid.UUID], *, lock: bool = False
    ) -> dict[uuid.UUID, list[AttemptRecord]]:
        """Every attempt of each transaction, by seq (row-locked with `lock`)."""
        ...

    async def add_attempts(
        self, attempts: Sequence[AttemptRecord], *, contested: bool = True
    ) -> set[uuid.UUID]:
        """Insert; returns the ids inserted. One whose (transaction, seq) another worker took
        first is not inserted. `contested=False`: the transactions were created in this
        unit, so no other worker can have recorded an attempt (the store need not check)."""
        ...

    async def save_attempts(self, attempts: Sequence[AttemptRecord]) -> None: ...

    async def restart_attempts(self, attempt_ids: Collection[uuid.UUID]) -> None:
        """Those attempts, still `started`, are being made again (a redo): their
        `started_at` becomes now. The reconciler takes a `started` attempt older than its
        age for one a dead worker left, so a redo in flight must look young."""

    async def started_for(self, attempt_id: uuid.UUID, *, age_s: float) -> bool:
        """The attempt is `started` and (last) started at least `age_s` seconds ago, by the
        database's clock: the one `restart_attempts` and `processing_due` use, so a
        reconciler whose own clock runs ahead cannot take a redo in flight for a call a
        dead worker left."""
        ...

    async def find_attempts(self, keys: Collection[AttemptKey]) -> dict[AttemptKey, AttemptRecord]:
        """The attempt each key names (by our key, else the provider's newest reference)."""
        ...

    async def find_and_lock(
        self, keys: Collection[AttemptKey]
    ) -> tuple[
        dict[AttemptKey, AttemptRecord],
        dict[uuid.UUID, TransactionRecord],
        dict[uuid.UUID, list[AttemptRecord]],
    ]:
        """`find_attempts`, then `lock_with_attempts` of their transactions, in one round
        trip: what each key names among the attempts of the transactions now locked (an
        attempt recorded meanwhile for a transaction not locked is not found: an orphan)."""
        ...

    # --- callbacks -------------------------------------------------------------------------
    async def first_seen(self, consumer: str, message_ids: Collection[str]) -> set[str]:
        """Record the ids in the inbox; returns those seen for the first time."""
        ...

    async def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None: ...

    async def park(self, parked: Sequence[ParkedCallback]) -> None:
        """Keep orphans (a second copy of the same provider event is ignored)."""

    async def parked_due(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        """(tenant, parked id) of orphans due for a retry, across tenants."""
        ...

    async def lock_parked(self, parked_id: int) -> ParkedCallback | None:
        """Lock an unresolved orphan; None if resolved or another worker holds it."""
        ...

    async def save_parked(self, parked: ParkedCallback) -> None: ...

    # --- reconciliation --------------------------------------------------------------------
    async def reconcile_due(
        self, *, pending_age_s: float, action_expiry_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(tenant, transaction) pairs the reconciler should look up now, across tenants."""
        ...

    async def processing_due(
        self, *, age_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(tenant, transaction) pairs still `processing` whose newest attempt is `started`
        and began at least `age_s` ago, due for a lookup, across tenants (the worker died
        during the call and its command never came back)."""
        ...

    async def resubmit(
        self, txns: Sequence[TransactionRecord], *, source: str, at: datetime, nonce: str
    ) -> None:
        """Queue each transaction's command again through the outbox, rebuilt from its row:
        the gateway worker resumes it like a redelivery. `nonce` makes the event ids new
        (one per resubmission)."""

    async def unresolved_count(self, *, horizon_s: float, stuck_processing_s: float) -> int: ...

    async def route_health(self, window_s: float) -> dict[tuple[str, str, str], WindowStats]:
        """Final attempts finished in the last `window_s` seconds per (gateway, country,
        transaction type), across tenants: the ranking's health (`paystream_core.ranking`)."""
        ...

    async def reconciliation(self, txn_id: uuid.UUID) -> ReconciliationRecord:
        """The row-locked bookkeeping of `txn_id` (created when it has none)."""
        ...

    async def save_reconciliation(self, record: ReconciliationRecord) -> None: ...


class PaymentStore(Protocol):
    def unit(self, tenant_id: uuid.UUID | None) -> AbstractAsyncContextManager[PaymentUnit]:
        """A new unit of work seeing only `tenant_id`'s rows (None: no tenant rows)."""
        ...
