"""An in-memory `paystream_core.ports.PaymentStore` for unit tests.

It mirrors `paystream_storage.payments` (`PgPaymentStore`) statement by statement:

- a unit is one database transaction: the state is snapshot when it opens and restored when
  the block raises; units run one at a time (one asyncio.Lock), so each sees the others'
  committed writes only;
- a unit sees and writes only its tenant's rows; a unit without a tenant (None) may only run
  the cross-tenant queries `parked_due`, `reconcile_due`, `processing_due`,
  `unresolved_count` and `route_health` (the real store's SECURITY DEFINER functions);
  anything else raises
  RuntimeError instead of silently finding no rows;
- inserts behave like `INSERT ... ON CONFLICT DO NOTHING`: `add_transactions` and
  `add_attempts` skip rows that exist (any unique key) and return the ids inserted, and they
  store only the columns the real INSERT writes;
- `apply` posts ledger legs and balances, updates rows (version checked: `ConcurrentChange`)
  and writes one schema-validated outcome event per new version. Transitions are applied one
  by one in list order, which is what the real chunks (one transition per transaction) and
  hold waves (one hold per balance) add up to: a hold the available balance cannot cover is
  refused and returned, any other posting that would go below zero raises `PostingRefused`;
- `resubmit` writes the command rebuilt by the real store's `command_of`, validated, to the
  outbox on the commands topic;
- `find_attempts` matches our idempotency key first, then the provider's reference on the
  attempt with the highest seq, both within the reporting connection;
- `first_seen` records inbox ids per consumer, across tenants (the primary key).

Not modelled: row locks and SKIP LOCKED between processes (units never overlap here, so
the races those resolve cannot happen, and a unit that waited for another unit would
deadlock), row-level security as a policy (the unit filters by tenant itself), foreign keys
other than account -> transaction -> attempt, transient database errors, `now()` being fixed
per database transaction (one `clock` here), and the outbox relay (`published_at`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from paystream_core.ledger import Bucket, balance_deltas, legs
from paystream_core.ports import (
    AnomalyRecord,
    AttemptKey,
    ParkedCallback,
    PaymentStore,
    ReconciliationRecord,
)
from paystream_core.ranking import WindowStats
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.reports import match_attempts
from paystream_core.routing import Route, TenantConnection
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_core.transitions import Transition
from paystream_messaging.outcomes import outcome_of
from paystream_messaging.schemas import SchemaRegistry
from paystream_messaging.topics import COMMANDS, OUTCOMES
from paystream_storage.payments import (
    ConcurrentChange,
    PostingRefused,
    command_of,
    resubmission_id,
)


@dataclass(frozen=True, slots=True)
class Balance:
    available: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    tenant_id: uuid.UUID
    transaction_id: uuid.UUID
    account_id: str
    bucket: Bucket
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    tenant_id: uuid.UUID
    key: str
    event_id: uuid.UUID
    event_type: str
    source: str
    occurred_at: datetime
    data: dict[str, Any]
    topic: str = OUTCOMES


@dataclass
class State:
    """Every table, as plain dicts and lists (deep-copied per unit)."""

    tenants: set[uuid.UUID] = field(default_factory=set)
    routes: list[Route] = field(default_factory=list)  # global, like gateway_countries
    connections: dict[uuid.UUID, list[TenantConnection]] = field(default_factory=dict)
    accounts: dict[tuple[uuid.UUID, str], str] = field(default_factory=dict)  # -> country
    transactions: dict[uuid.UUID, TransactionRecord] = field(default_factory=dict)
    attempts: dict[uuid.UUID, AttemptRecord] = field(default_factory=dict)
    balances: dict[tuple[uuid.UUID, str, str], Balance] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    outbox: list[OutboxEvent] = field(default_factory=list)
    inbox: dict[tuple[str, str], uuid.UUID] = field(default_factory=dict)
    anomalies: list[AnomalyRecord] = field(default_factory=list)
    parked: dict[int, ParkedCallback] = field(default_factory=dict)
    reconciliations: dict[uuid.UUID, ReconciliationRecord] = field(default_factory=dict)
    next_parked_id: int = 1


def _now() -> datetime:
    return datetime.now(UTC)


class FakeStore:
    """The store; `state` is public so tests can read (and seed) any table."""

    def __init__(
        self, registry: SchemaRegistry | None = None, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self.state = State()
        self.registry = registry or SchemaRegistry()
        self.clock = clock
        self.commits = 0
        self.rollbacks = 0
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @asynccontextmanager
    async def unit(self, tenant_id: uuid.UUID | None) -> AsyncIterator[FakeUnit]:
        me = asyncio.current_task()
        if me is not None and self._owner is me:
            raise RuntimeError("a unit opened inside another unit of the same task")
        async with self._lock:
            self._owner = me
            snapshot = copy.deepcopy(self.state)
            unit = FakeUnit(self, tenant_id)
            try:
                yield unit
            except BaseException:
                self.state = snapshot
                self.rollbacks += 1
                raise
            else:
                self.commits += 1
            finally:
                unit.closed = True
                self._owner = None

    # --- seeding -----------------------------------------------------------------------

    def add_tenant(self, tenant_id: uuid.UUID | None = None) -> uuid.UUID:
        tenant = tenant_id or uuid.uuid4()
        self.state.tenants.add(tenant)
        return tenant

    def add_route(
        self,
        gateway: str,
        *,
        priority: int,
        kinds: Collection[TransactionType] = tuple(TransactionType),
        country: str = "DE",
        provider: str = "scripted",
        currencies: Collection[str] = ("EUR",),
        enabled: bool = True,
        min_amount_minor: int = 1,
        max_amount_minor: int | None = None,
        weight: int = 100,
    ) -> None:
        for kind in kinds:
            self.state.routes.append(
                Route(
                    gateway,
                    provider,
                    country,
                    kind,
                    priority,
                    enabled,
                    frozenset(currencies),
                    min_amount_minor,
                    max_amount_minor,
                    weight,
                )
            )

    def set_gateway_enabled(self, gateway: str, enabled: bool) -> None:
        """Like `paystream gateways down|up CODE`: every route of the gateway."""
        self.state.routes = [
            dataclasses.replace(r, enabled=enabled) if r.gateway == gateway else r
            for r in self.state.routes
        ]

    def add_connection(
        self,
        tenant: uuid.UUID,
        gateway: str,
        *,
        connection_id: uuid.UUID | None = None,
        enabled: bool = True,
        created_at: datetime | None = None,
    ) -> uuid.UUID:
        conn = TenantConnection(
            gateway, connection_id or uuid.uuid4(), enabled, created_at or self.clock()
        )
        self.state.connections.setdefault(tenant, []).append(conn)
        return conn.connection_id

    def put_transaction(self, txn: TransactionRecord) -> TransactionRecord:
        """Store a row exactly as given (and its account), like a test's raw SQL insert."""
        self.state.accounts.setdefault((txn.tenant_id, txn.account_id), txn.country)
        now = self.clock()
        txn = dataclasses.replace(
            txn, created_at=txn.created_at or now, updated_at=txn.updated_at or now
        )
        self.state.transactions[txn.id] = txn
        return txn

    def put_attempt(self, attempt: AttemptRecord) -> AttemptRecord:
        attempt = dataclasses.replace(attempt, started_at=attempt.started_at or self.clock())
        self.state.attempts[attempt.id] = attempt
        return attempt

    def set_balance(
        self, tenant: uuid.UUID, account: str, available: int, held: int = 0, currency: str = "EUR"
    ) -> None:
        """Seed a balance (no ledger entries: the books start here)."""
        self.state.balances[(tenant, account, currency)] = Balance(available, held)

    # --- reading -----------------------------------------------------------------------

    def transaction(self, txn_id: uuid.UUID) -> TransactionRecord:
        return self.state.transactions[txn_id]

    def status(self, txn_id: uuid.UUID) -> Status:
        return self.state.transactions[txn_id].status

    def attempts_of(self, txn_id: uuid.UUID) -> list[AttemptRecord]:
        found = [a for a in self.state.attempts.values() if a.transaction_id == txn_id]
        return sorted(found, key=lambda a: a.seq)

    def outcomes(self, txn_id: uuid.UUID) -> list[tuple[str, int]]:
        """(status, version) of the transaction's outcome events, in write order."""
        return [
            (e.data["status"], e.data["version"])
            for e in self.state.outbox
            if e.topic == OUTCOMES and e.data["transaction_id"] == str(txn_id)
        ]

    def commands(self, txn_id: uuid.UUID) -> list[OutboxEvent]:
        """The transaction's commands queued again (resubmitted), in write order."""
        return [
            e
            for e in self.state.outbox
            if e.topic == COMMANDS and e.data["transaction_id"] == str(txn_id)
        ]

    def balance(self, tenant: uuid.UUID, account: str, currency: str = "EUR") -> tuple[int, int]:
        """(available, held)."""
        found = self.state.balances.get((tenant, account, currency), Balance())
        return found.available, found.held

    def ledger_sum(self, txn_id: uuid.UUID) -> int:
        return sum(e.amount_minor for e in self.state.ledger if e.transaction_id == txn_id)

    def anomalies(self, txn_id: uuid.UUID | None = None) -> list[AnomalyRecord]:
        return [a for a in self.state.anomalies if txn_id is None or a.transaction_id == txn_id]


class FakeUnit:
    """`paystream_core.ports.PaymentUnit` over a `FakeStore`'s state."""

    def __init__(self, store: FakeStore, tenant_id: uuid.UUID | None) -> None:
        self._store = store
        self._tenant = tenant_id
        self.closed = False

    @property
    def _s(self) -> State:
        if self.closed:
            raise RuntimeError("this unit has ended")
        return self._store.state

    @property
    def tenant(self) -> uuid.UUID:
        if self._tenant is None:
            raise RuntimeError("this unit has no tenant scope")
        return self._tenant

    def _now(self) -> datetime:
        return self._store.clock()

    def _txn(self, txn_id: uuid.UUID) -> TransactionRecord | None:
        txn = self._s.transactions.get(txn_id)
        return txn if txn is not None and txn.tenant_id == self.tenant else None

    def _attempts(self) -> list[AttemptRecord]:
        return [a for a in self._s.attempts.values() if a.tenant_id == self.tenant]

    # --- commands ------------------------------------------------------------------------

    async def tenant_exists(self) -> bool:
        return self.tenant in self._s.tenants

    async def add_accounts(self, accounts: Sequence[tuple[str, str]]) -> None:
        for account, country in accounts:
            self._s.accounts.setdefault((self.tenant, account), country)

    async def add_transactions(self, txns: Sequence[TransactionRecord]) -> set[uuid.UUID]:
        inserted: set[uuid.UUID] = set()
        now = self._now()
        for t in txns:
            _same_tenant(t.tenant_id, self.tenant)
            if (t.tenant_id, t.account_id) not in self._s.accounts:
                raise psycopg.errors.ForeignKeyViolation(f"no account {t.account_id}")
            taken = any(
                o.id == t.id or (o.tenant_id, o.idempotency_key) == (t.tenant_id, t.idempotency_key)
                for o in self._s.transactions.values()
            )
            if taken:
                continue
            self._s.transactions[t.id] = dataclasses.replace(
                t,
                metadata=dict(t.metadata),
                gateway_code=None,
                provider_reference=None,
                failure_code=None,
                failure_message=None,
                created_at=now,
                updated_at=now,
            )
            inserted.add(t.id)
        return inserted

    async def lock_transactions(
        self, ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, TransactionRecord]:
        found = [t for t in map(self._txn, ids) if t is not None]
        return {t.id: t for t in sorted(found, key=lambda t: t.id)}

    async def lock_with_attempts(
        self, ids: Collection[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, TransactionRecord], dict[uuid.UUID, list[AttemptRecord]]]:
        return await self.lock_transactions(ids), await self.attempts(ids, lock=True)

    async def transaction(self, txn_id: uuid.UUID) -> TransactionRecord | None:
        return self._txn(txn_id)

    async def routing(
        self, country: str, kind: TransactionType
    ) -> tuple[list[Route], list[TenantConnection]]:
        routes = [r for r in self._s.routes if r.country == country and r.kind == kind]
        return routes, list(self._s.connections.get(self.tenant, []))

    async def apply(self, transitions: Sequence[Transition], *, source: str) -> set[uuid.UUID]:
        refused: set[uuid.UUID] = set()
        for t in transitions:
            if t.money is not None and not self._post(t):
                if not t.hold:
                    raise PostingRefused(f"postings refused for {[t.after.id]}")
                refused.add(t.after.id)
                continue
            stored = self._txn(t.after.id)
            if stored is None or stored.version != t.after.version - 1:
                raise ConcurrentChange(f"transactions changed under their lock: {[t.after.id]}")
            self._s.transactions[stored.id] = dataclasses.replace(
                stored,
                status=t.after.status,
                version=t.after.version,
                updated_at=t.at,
                gateway_code=t.after.gateway_code,
                provider_reference=t.after.provider_reference,
                failure_code=t.after.failure_code,
                failure_message=t.after.failure_message,
            )
            self._outcome(t, source)
        return refused

    def _post(self, t: Transition) -> bool:
        """Ledger legs and the balance of one money event; False when refused."""
        assert t.money is not None
        txn = t.after
        key = (self.tenant, txn.account_id, txn.currency)
        balance = self._s.balances.setdefault(key, Balance())
        available, held = balance_deltas(t.money, txn.amount_minor)
        after = Balance(balance.available + available, balance.held + held)
        if after.available < 0 or after.held < 0:
            return False
        self._s.balances[key] = after
        for leg in legs(t.money, txn.amount_minor):
            self._s.ledger.append(
                LedgerEntry(
                    self.tenant, txn.id, txn.account_id, leg.bucket, txn.currency, leg.amount_minor
                )
            )
        return True

    def _outcome(self, t: Transition, source: str) -> None:
        outcome = outcome_of(t.after, at=t.at, redirect_url=t.redirect_url)
        data = outcome.data()
        self._store.registry.validate(outcome.EVENT_TYPE, data)
        event_id = outcome.event_id()
        if any(e.event_id == event_id for e in self._s.outbox):
            raise psycopg.errors.UniqueViolation(f"outbox event {event_id} exists")
        key = t.after.account_id
        self._s.outbox.append(
            OutboxEvent(self.tenant, key, event_id, outcome.EVENT_TYPE, source, t.at, data)
        )

    # --- attempts --------------------------------------------------------------------------

    async def attempts(
        self, txn_ids: Collection[uuid.UUID], *, lock: bool = False
    ) -> dict[uuid.UUID, list[AttemptRecord]]:
        found: dict[uuid.UUID, list[AttemptRecord]] = {txn: [] for txn in txn_ids}
        for a in sorted(self._attempts(), key=lambda a: (a.transaction_id, a.seq)):
            if a.transaction_id in found:
                found[a.transaction_id].append(a)
        return found

    async def add_attempts(
        self, attempts: Sequence[AttemptRecord], *, contested: bool = True
    ) -> set[uuid.UUID]:
        inserted: set[uuid.UUID] = set()
        now = self._now()
        for a in attempts:
            _same_tenant(a.tenant_id, self.tenant)
            if a.transaction_id not in self._s.transactions:
                raise psycopg.errors.ForeignKeyViolation(f"no transaction {a.transaction_id}")
            taken = any(
                o.id == a.id
                or o.idempotency_key == a.idempotency_key
                or (o.transaction_id, o.seq) == (a.transaction_id, a.seq)
                for o in self._s.attempts.values()
            )
            if taken:
                continue
            self._s.attempts[a.id] = dataclasses.replace(
                a,
                provider_reference=None,
                error_class=None,
                error_code=None,
                error_message=None,
                started_at=now,
                finished_at=None,
            )
            inserted.add(a.id)
        return inserted

    async def restart_attempts(self, attempt_ids: Collection[uuid.UUID]) -> None:
        now = self._now()
        for attempt_id in attempt_ids:
            stored = self._s.attempts.get(attempt_id)
            if stored is None or stored.tenant_id != self.tenant:
                continue  # an UPDATE that matches no visible row
            if stored.status == AttemptStatus.STARTED:
                self._s.attempts[attempt_id] = dataclasses.replace(stored, started_at=now)

    async def started_for(self, attempt_id: uuid.UUID, *, age_s: float) -> bool:
        stored = self._s.attempts.get(attempt_id)
        return (
            stored is not None
            and stored.tenant_id == self.tenant
            and stored.status == AttemptStatus.STARTED
            and stored.started_at is not None
            and stored.started_at <= self._now() - timedelta(seconds=age_s)
        )

    async def save_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        for a in attempts:
            stored = self._s.attempts.get(a.id)
            if stored is None or stored.tenant_id != self.tenant:
                continue  # an UPDATE that matches no visible row
            self._s.attempts[a.id] = dataclasses.replace(
                stored,
                status=a.status,
                provider_reference=a.provider_reference,
                error_class=a.error_class,
                error_code=a.error_code,
                error_message=a.error_message,
                finished_at=a.finished_at,
            )

    async def find_and_lock(
        self, keys: Collection[AttemptKey]
    ) -> tuple[
        dict[AttemptKey, AttemptRecord],
        dict[uuid.UUID, TransactionRecord],
        dict[uuid.UUID, list[AttemptRecord]],
    ]:
        found = await self.find_attempts(keys)
        txns, locked = await self.lock_with_attempts({a.transaction_id for a in found.values()})
        return found, txns, locked

    async def find_attempts(self, keys: Collection[AttemptKey]) -> dict[AttemptKey, AttemptRecord]:
        connections = {k.connection_id for k in keys}
        references = {k.reference for k in keys if k.reference}
        provider_refs = {k.provider_reference for k in keys if k.provider_reference}
        rows = [
            a
            for a in self._attempts()
            if a.connection_id in connections
            and (a.idempotency_key in references or a.provider_reference in provider_refs)
        ]
        return match_attempts(keys, rows)

    # --- callbacks -------------------------------------------------------------------------

    async def first_seen(self, consumer: str, message_ids: Collection[str]) -> set[str]:
        fresh: set[str] = set()
        for message_id in message_ids:
            if (consumer, message_id) not in self._s.inbox:
                self._s.inbox[(consumer, message_id)] = self.tenant
                fresh.add(message_id)
        return fresh

    async def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        self._s.anomalies += [dataclasses.replace(a, tenant_id=self.tenant) for a in anomalies]

    async def park(self, parked: Sequence[ParkedCallback]) -> None:
        for p in parked:
            key = (p.connection_id, p.provider_event_id)
            if any((o.connection_id, o.provider_event_id) == key for o in self._s.parked.values()):
                continue
            parked_id = self._s.next_parked_id
            self._s.next_parked_id += 1
            self._s.parked[parked_id] = dataclasses.replace(
                p,
                id=parked_id,
                tenant_id=self.tenant,
                tries=0,
                next_try_at=self._now(),
                resolved_at=None,
                resolution=None,
            )

    async def parked_due(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        now = self._now()
        due = [
            p
            for p in self._s.parked.values()
            if p.resolved_at is None and p.next_try_at is not None and p.next_try_at <= now
        ]
        due.sort(key=lambda p: p.next_try_at or now)
        return [(p.tenant_id, p.id) for p in due[:limit] if p.id is not None]

    async def lock_parked(self, parked_id: int) -> ParkedCallback | None:
        p = self._s.parked.get(parked_id)
        if p is None or p.tenant_id != self.tenant or p.resolved_at is not None:
            return None
        return p

    async def save_parked(self, parked: ParkedCallback) -> None:
        stored = self._s.parked.get(parked.id or 0)
        if stored is None or stored.tenant_id != self.tenant:
            return
        self._s.parked[stored.id or 0] = dataclasses.replace(
            stored,
            tries=parked.tries,
            next_try_at=parked.next_try_at,
            resolved_at=parked.resolved_at,
            resolution=parked.resolution,
        )

    # --- reconciliation --------------------------------------------------------------------

    async def reconcile_due(
        self, *, pending_age_s: float, action_expiry_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        now = self._now()
        due: list[tuple[datetime, TransactionRecord]] = []
        for t in self._s.transactions.values():
            updated = t.updated_at or now
            waiting = (
                t.status in (Status.PENDING, Status.UNKNOWN)
                and updated <= now - timedelta(seconds=pending_age_s)
            ) or (
                t.status == Status.ACTION_REQUIRED
                and updated <= now - timedelta(seconds=action_expiry_s)
            )
            booked = self._s.reconciliations.get(t.id)
            next_at = booked.next_lookup_at if booked is not None else None
            if waiting and (next_at is None or next_at <= now):
                due.append((next_at or updated, t))
        due.sort(key=lambda entry: entry[0])
        return [(t.tenant_id, t.id) for _, t in due[:limit]]

    async def processing_due(
        self, *, age_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        now = self._now()
        since = now - timedelta(seconds=age_s)
        newest: dict[uuid.UUID, AttemptRecord] = {}
        for a in self._s.attempts.values():
            if a.transaction_id not in newest or a.seq > newest[a.transaction_id].seq:
                newest[a.transaction_id] = a
        due: list[tuple[datetime, TransactionRecord]] = []
        for t in self._s.transactions.values():
            attempt = newest.get(t.id)
            if t.status != Status.PROCESSING or attempt is None:
                continue
            started = attempt.started_at or now
            booked = self._s.reconciliations.get(t.id)
            next_at = booked.next_lookup_at if booked is not None else None
            if (
                (t.updated_at or now) <= since
                and attempt.status == AttemptStatus.STARTED
                and started <= since
                and (next_at is None or next_at <= now)
            ):
                due.append((next_at or started, t))
        due.sort(key=lambda entry: entry[0])
        return [(t.tenant_id, t.id) for _, t in due[:limit]]

    async def resubmit(
        self, txns: Sequence[TransactionRecord], *, source: str, at: datetime, nonce: str
    ) -> None:
        for txn in txns:
            _same_tenant(txn.tenant_id, self.tenant)
            command = command_of(txn)
            data = command.data()
            self._store.registry.validate(command.EVENT_TYPE, data)
            event_id = resubmission_id(txn, nonce)
            if any(e.event_id == event_id for e in self._s.outbox):
                raise psycopg.errors.UniqueViolation(f"outbox event {event_id} exists")
            self._s.outbox.append(
                OutboxEvent(
                    self.tenant,
                    txn.account_id,
                    event_id,
                    command.EVENT_TYPE,
                    source,
                    at,
                    data,
                    topic=COMMANDS,
                )
            )

    async def route_health(self, window_s: float) -> dict[tuple[str, str, str], WindowStats]:
        since = self._now() - timedelta(seconds=window_s)
        counts: dict[tuple[str, str, str], list[int]] = {}
        for a in self._s.attempts.values():
            final = a.status in (AttemptStatus.SUCCEEDED, AttemptStatus.DECLINED)
            if not final or a.finished_at is None or a.finished_at <= since:
                continue
            txn = self._s.transactions[a.transaction_id]
            count = counts.setdefault((a.gateway_code, txn.country, txn.type.value), [0, 0])
            count[0] += 1
            count[1] += a.status == AttemptStatus.SUCCEEDED
        return {key: WindowStats(final, ok) for key, (final, ok) in counts.items()}

    async def unresolved_count(self, *, horizon_s: float, stuck_processing_s: float) -> int:
        now = self._now()
        horizon = now - timedelta(seconds=horizon_s)
        stuck = now - timedelta(seconds=stuck_processing_s)
        return sum(
            1
            for t in self._s.transactions.values()
            if (t.status in (Status.PENDING, Status.UNKNOWN) and (t.created_at or now) <= horizon)
            or (t.status in (Status.RECEIVED, Status.PROCESSING) and (t.updated_at or now) <= stuck)
        )

    async def reconciliation(self, txn_id: uuid.UUID) -> ReconciliationRecord:
        record = self._s.reconciliations.get(txn_id)
        if record is None:
            record = ReconciliationRecord(txn_id, self.tenant, next_lookup_at=self._now())
            self._s.reconciliations[txn_id] = record
        if record.tenant_id != self.tenant:
            raise RuntimeError(f"reconciliation of {txn_id} belongs to another tenant")
        return record

    async def save_reconciliation(self, record: ReconciliationRecord) -> None:
        stored = self._s.reconciliations.get(record.transaction_id)
        if stored is not None and stored.tenant_id == self.tenant:
            self._s.reconciliations[record.transaction_id] = dataclasses.replace(
                record, tenant_id=stored.tenant_id
            )


def _same_tenant(row: uuid.UUID, unit: uuid.UUID) -> None:
    """Row-level security's WITH CHECK: a unit writes only its own tenant's rows."""
    if row != unit:
        raise psycopg.errors.InsufficientPrivilege(f"row of tenant {row} in a unit of {unit}")


def _is_a_payment_store(store: FakeStore) -> PaymentStore:
    return store  # mypy checks FakeStore against the port here
