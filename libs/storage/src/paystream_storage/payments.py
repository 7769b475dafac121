"""The storage port (`paystream_core.ports`) on PostgreSQL, with set-based SQL.

A unit is one database transaction on a pooled connection, as the non-owner app role with
the tenant set LOCAL to it (row-level security holds on every statement). Statements take
whole batches as one JSON row set each (`statements.rowset`), so a batch of commands costs
a handful of statements instead of a few per command.

Statements are queued (`statements.StatementQueue`): one whose result is not needed yet
goes to the server, as one simple query, with the next one that must be read. Writes whose
row counts prove the unit held its locks are checked just before the commit (`verify`).
So a unit costs a few network round trips, whatever its number of statements.
Plain psycopg, not the ORM: this is the hot path, and nothing here needs an object graph.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from paystream_core.ids import PAYSTREAM_NAMESPACE
from paystream_core.ledger import balance_deltas, legs
from paystream_core.ports import (
    AnomalyRecord,
    AttemptKey,
    ParkedCallback,
    ReconciliationRecord,
)
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.reports import match_attempts
from paystream_core.routing import Route, TenantConnection
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_core.transitions import Transition
from paystream_messaging.commands import (
    Command,
    RequestDeposit,
    RequestWithdrawal,
    SealedDestination,
)
from paystream_messaging.outcomes import outcome_of
from paystream_messaging.schemas import SchemaRegistry
from paystream_messaging.topics import COMMANDS, OUTCOMES
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import APP_ROLE
from paystream_storage.outbox import shard_for
from paystream_storage.pool import HotPool
from paystream_storage.route_health import ROUTE_HEALTH_SQL, Health, health_of
from paystream_storage.statements import Json, Result, Rows, StatementQueue, rowset
from paystream_telemetry.carry import traceparent_for


class ConcurrentChange(RuntimeError):
    """A row changed under a unit that should have held its lock: a bug, never retried
    into a wrong state (the whole unit rolls back)."""


class PostingRefused(RuntimeError):
    """A posting other than a hold would take a balance below zero: the books disagree
    with the transaction's history (the unit rolls back; a human must look)."""


# The tenant scope of the unit, and the configuration version for the caches: one round trip.
_SCOPE = (
    "SELECT set_config('role', %s, true), set_config('paystream.tenant_id', %s, true),"
    " (SELECT version FROM config_version)"
)

_TXN_COLUMNS = (
    "id, tenant_id, account_id, type, status, version, amount_minor, currency, country,"
    " idempotency_key, payload_hash, payment_method, metadata, destination_ciphertext,"
    " destination_key_id, destination_masked, gateway_code, provider_reference, failure_code,"
    " failure_message, created_at, updated_at"
)
_ATTEMPT_COLUMNS = (
    "id, tenant_id, transaction_id, seq, gateway_code, connection_id, idempotency_key, status,"
    " provider_reference, error_class, error_code, error_message, started_at, finished_at,"
    " route_reason"
)
_PARKED_COLUMNS = (
    "id, tenant_id, connection_id, gateway_code, provider_event_id, provider_reference,"
    " reference, body, body_encoding, received_at, tries, next_try_at, resolved_at, resolution"
)

# Row sets too wide to read inline.
_TRANSACTION_ROWS = rowset(
    "uuid",
    "uuid",
    "text",
    "text",
    "text",
    "int",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "bytea",
    "text",
    "text",
)
_OUTBOX_ROWS = rowset(
    "text", "text", "smallint", "uuid", "text", "text", "timestamptz", "jsonb", "text"
)
_PARKED_ROWS = rowset("uuid", "text", "text", "text", "text", "text", "text", "timestamptz")
_ADD_ACCOUNTS = f"""
INSERT INTO accounts (tenant_id, id, country)
SELECT %s, a, c FROM {rowset("text", "text")} AS v(a, c)
ON CONFLICT DO NOTHING
"""
_ADD_TRANSACTIONS = f"""
INSERT INTO transactions (id, tenant_id, account_id, type, status, version, amount_minor,
  currency, country, idempotency_key, payload_hash, payment_method, metadata,
  destination_ciphertext, destination_key_id, destination_masked)
SELECT * FROM {_TRANSACTION_ROWS} AS v
ON CONFLICT DO NOTHING
RETURNING id
"""
_LOCK_TRANSACTIONS = (
    f"SELECT {_TXN_COLUMNS} FROM transactions WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE"
)
_TRANSACTION = f"SELECT {_TXN_COLUMNS} FROM transactions WHERE id = %s"
_ROUTES = """
SELECT gc.gateway_code, g.provider, gc.country, gc.transaction_type, gc.priority,
  gc.enabled AND g.enabled, g.currencies, g.min_amount_minor, g.max_amount_minor, gc.weight
FROM gateway_countries gc JOIN gateways g ON g.code = gc.gateway_code
WHERE gc.country = %s AND gc.transaction_type = %s
"""
_CONNECTIONS = "SELECT gateway_code, id, enabled, created_at FROM connections WHERE tenant_id = %s"
_ENSURE_BALANCES = f"""
INSERT INTO balances (tenant_id, account_id, currency)
SELECT %s, a, c FROM {rowset("text", "text")} AS v(a, c)
ON CONFLICT DO NOTHING
"""
# Credits (never refused): the first one creates the balance row, so one statement does
# both. Only for deltas that are not negative: PostgreSQL checks the balances' CHECK
# constraints on the row it would insert before it looks for a conflict.
_UPSERT_POSTINGS = f"""
INSERT INTO balances AS b (tenant_id, account_id, currency, available_minor, held_minor)
SELECT %s, * FROM {rowset("text", "text", "bigint", "bigint")} AS v
ON CONFLICT (tenant_id, account_id, currency) DO UPDATE
SET available_minor = b.available_minor + excluded.available_minor,
  held_minor = b.held_minor + excluded.held_minor, updated_at = now()
WHERE b.available_minor + excluded.available_minor >= 0
  AND b.held_minor + excluded.held_minor >= 0
RETURNING b.account_id, b.currency
"""
# One row per (account, currency) in each call: a row can be updated once per statement.
_POST = f"""
UPDATE balances b SET available_minor = b.available_minor + v.da,
  held_minor = b.held_minor + v.dh, updated_at = now()
FROM {rowset("text", "text", "bigint", "bigint")} AS v(a, c, da, dh)
WHERE b.tenant_id = %s AND b.account_id = v.a AND b.currency = v.c
  AND b.available_minor + v.da >= 0 AND b.held_minor + v.dh >= 0
RETURNING v.a, v.c
"""
_ADD_LEDGER = f"""
INSERT INTO ledger_entries (tenant_id, transaction_id, account_id, bucket, currency, amount_minor)
SELECT %s, * FROM {rowset("uuid", "text", "text", "text", "bigint")} AS v
"""
_UPDATE_TRANSACTIONS = f"""
UPDATE transactions t SET status = v.status, version = v.version, updated_at = v.updated_at,
  gateway_code = v.gateway_code, provider_reference = v.provider_reference,
  failure_code = v.failure_code, failure_message = v.failure_message
FROM {rowset("uuid", "text", "int", "timestamptz", "text", "text", "text", "text")}
  AS v(id, status, version, updated_at, gateway_code, provider_reference, failure_code,
       failure_message)
WHERE t.id = v.id AND t.version = v.version - 1
RETURNING t.id
"""
_ADD_OUTBOX = f"""
INSERT INTO outbox (tenant_id, topic, key, shard, event_id, event_type, source, occurred_at,
  data, traceparent)
SELECT %s, * FROM {_OUTBOX_ROWS} AS v
"""
_ATTEMPTS = f"""
SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE transaction_id = ANY(%s::uuid[])
ORDER BY transaction_id, seq
"""
# With the transaction's country and type, so the health window reads attempts alone
# (migration 0014). LEFT JOIN: an attempt of a transaction this unit cannot see still
# meets its foreign key, as before, instead of vanishing.
_ADD_ATTEMPTS = f"""
INSERT INTO attempts (id, tenant_id, transaction_id, seq, gateway_code, connection_id,
  idempotency_key, status, route_reason, country, transaction_type)
SELECT v.*, t.country, t.type
FROM {rowset("uuid", "uuid", "uuid", "int", "text", "uuid", "text", "text", "text")}
  AS v(id, tenant_id, transaction_id, seq, gateway_code, connection_id, idempotency_key,
       status, route_reason)
LEFT JOIN transactions t ON t.id = v.transaction_id
ON CONFLICT DO NOTHING
RETURNING id
"""
_SAVE_ATTEMPTS = f"""
UPDATE attempts a SET status = v.status, provider_reference = v.provider_reference,
  error_class = v.error_class, error_code = v.error_code, error_message = v.error_message,
  finished_at = v.finished_at
FROM {rowset("uuid", "text", "text", "text", "text", "text", "timestamptz")}
  AS v(id, status, provider_reference, error_class, error_code, error_message, finished_at)
WHERE a.id = v.id
"""
# now(): the database's clock, the one `paystream_processing_due` compares with.
_RESTART_ATTEMPTS = """
UPDATE attempts SET started_at = now() WHERE id = ANY(%s::uuid[]) AND status = 'started'
"""
# The reconciler's age checks, on the clock `processing_due` and `_RESTART_ATTEMPTS` use.
_STARTED_FOR = """
SELECT EXISTS (SELECT 1 FROM attempts WHERE id = %s AND status = 'started'
  AND started_at <= now() - make_interval(secs => %s))
"""
_FIND_ATTEMPTS = f"""
SELECT {_ATTEMPT_COLUMNS} FROM attempts
WHERE connection_id = ANY(%s::uuid[])
  AND (idempotency_key = ANY(%s::text[]) OR provider_reference = ANY(%s::text[]))
"""
# The transactions of the attempts some keys name, locked, then all their attempts: one
# round trip for what a callback batch reads. Transactions first, the worker's lock order.
_NAMED = """
SELECT transaction_id FROM attempts
WHERE connection_id = ANY(%s::uuid[])
  AND (idempotency_key = ANY(%s::text[]) OR provider_reference = ANY(%s::text[]))
"""
_LOCK_NAMED = (
    f"SELECT {_TXN_COLUMNS} FROM transactions WHERE id IN ({_NAMED}) ORDER BY id FOR UPDATE"
)
_ATTEMPTS_NAMED = f"""
SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE transaction_id IN ({_NAMED})
ORDER BY transaction_id, seq FOR UPDATE
"""
_FIRST_SEEN = f"""
INSERT INTO inbox (consumer, message_id, tenant_id)
SELECT %s, m, %s FROM {rowset("text")} AS v(m)
ON CONFLICT DO NOTHING
RETURNING message_id
"""
_ADD_ANOMALIES = f"""
INSERT INTO anomalies (tenant_id, transaction_id, connection_id, source, kind,
  provider_event_id, transaction_status, reported_status, detail)
SELECT %s, * FROM {rowset("uuid", "uuid", "text", "text", "text", "text", "text", "text")} AS v
"""
_PARK = f"""
INSERT INTO parked_callbacks (tenant_id, connection_id, gateway_code, provider_event_id,
  provider_reference, reference, body, body_encoding, received_at)
SELECT %s, * FROM {_PARKED_ROWS} AS v
ON CONFLICT DO NOTHING
"""
_PARKED_DUE = "SELECT tenant_id, parked_id FROM paystream_parked_callbacks_due(%s)"
_LOCK_PARKED = f"""
SELECT {_PARKED_COLUMNS} FROM parked_callbacks
WHERE id = %s AND resolved_at IS NULL
FOR UPDATE SKIP LOCKED
"""
_SAVE_PARKED = """
UPDATE parked_callbacks SET tries = %s, next_try_at = %s, resolved_at = %s, resolution = %s
WHERE id = %s
"""
_RECONCILE_DUE = "SELECT tenant_id, transaction_id FROM paystream_reconcile_due(%s, %s, %s)"
_PROCESSING_DUE = "SELECT tenant_id, transaction_id FROM paystream_processing_due(%s, %s)"
_UNRESOLVED = "SELECT paystream_unresolved_count(%s, %s)"
_ADD_RECONCILIATION = """
INSERT INTO reconciliations (transaction_id, tenant_id) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""
_LOCK_RECONCILIATION = """
SELECT transaction_id, tenant_id, lookups, next_lookup_at, last_lookup_at, last_result,
  reported_at
FROM reconciliations WHERE transaction_id = %s FOR UPDATE
"""
_SAVE_RECONCILIATION = """
UPDATE reconciliations SET lookups = %s, next_lookup_at = %s, last_lookup_at = %s,
  last_result = %s, reported_at = %s
WHERE transaction_id = %s
"""


def _transaction(row: Sequence[Any]) -> TransactionRecord:
    return TransactionRecord(
        id=row[0],
        tenant_id=row[1],
        account_id=row[2],
        type=TransactionType(row[3]),
        status=Status(row[4]),
        version=row[5],
        amount_minor=row[6],
        currency=row[7],
        country=row[8],
        idempotency_key=row[9],
        payload_hash=row[10],
        payment_method=row[11],
        metadata=row[12] or {},
        destination_ciphertext=row[13],
        destination_key_id=row[14],
        destination_masked=row[15],
        gateway_code=row[16],
        provider_reference=row[17],
        failure_code=row[18],
        failure_message=row[19],
        created_at=row[20],
        updated_at=row[21],
    )


def _route(row: Sequence[Any]) -> Route:
    return Route(
        gateway=row[0],
        provider=row[1],
        country=row[2],
        kind=TransactionType(row[3]),
        priority=row[4],
        enabled=row[5],
        currencies=frozenset(row[6]),
        min_amount_minor=row[7],
        max_amount_minor=row[8],
        weight=row[9],
    )


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        id=row[0],
        tenant_id=row[1],
        transaction_id=row[2],
        seq=row[3],
        gateway_code=row[4],
        connection_id=row[5],
        idempotency_key=row[6],
        status=AttemptStatus(row[7]),
        provider_reference=row[8],
        error_class=row[9],
        error_code=row[10],
        error_message=row[11],
        started_at=row[12],
        finished_at=row[13],
        route_reason=row[14],
    )


def _parked(row: Sequence[Any]) -> ParkedCallback:
    return ParkedCallback(
        id=row[0],
        tenant_id=row[1],
        connection_id=row[2],
        gateway_code=row[3],
        provider_event_id=row[4],
        provider_reference=row[5],
        reference=row[6],
        body=row[7],
        body_encoding=row[8],
        received_at=row[9],
        tries=row[10],
        next_try_at=row[11],
        resolved_at=row[12],
        resolution=row[13],
    )


class PgPaymentUnit:
    """`paystream_core.ports.PaymentUnit` inside one open PostgreSQL transaction."""

    def __init__(
        self,
        queue: StatementQueue,
        tenant_id: uuid.UUID | None,
        registry: SchemaRegistry,
        config: ConfigCache,
        scope: Result,
    ) -> None:
        self._q = queue
        self._tenant = tenant_id
        self._registry = registry
        self._config = config
        self._scope = scope  # its row carries the configuration version, read when needed
        self._version: int | None = None
        self._checks: list[tuple[Result, Callable[[list[Any]], None]]] = []

    async def version(self) -> int:
        """The configuration version this unit runs under (the caches are checked on it)."""
        if self._version is None:
            rows = await self._scope.rows()
            self._version = int(rows[0][2]) if rows else 0
            self._config.observe(self._version)
        return self._version

    def _check_later(self, result: Result, check: Callable[[list[Any]], None]) -> None:
        self._checks.append((result, check))

    async def verify(self) -> None:
        """Read the deferred results and raise if one proves the unit wrong (before the
        commit: the whole unit then rolls back)."""
        checks, self._checks = self._checks, []
        for result, check in checks:
            check(await result.rows())

    @property
    def tenant(self) -> uuid.UUID:
        if self._tenant is None:
            raise RuntimeError("this unit has no tenant scope")
        return self._tenant

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._q.add(sql, params).rows()

    # --- commands ------------------------------------------------------------------------

    async def tenant_exists(self) -> bool:
        # Tenants are never deleted, so one seen once is known for good (whatever the
        # version); one created a moment ago is found at once: misses are not remembered.
        if self.tenant in self._config.tenants:
            return True
        rows = await self._rows("SELECT 1 FROM tenants WHERE id = %s", (self.tenant,))
        if rows:
            self._config.tenants.add(self.tenant)
        return bool(rows)

    async def add_accounts(self, accounts: Sequence[tuple[str, str]]) -> None:
        if accounts:
            self._q.add(_ADD_ACCOUNTS, (self.tenant, Rows(sorted(set(accounts)))))

    async def add_transactions(self, txns: Sequence[TransactionRecord]) -> set[uuid.UUID]:
        if not txns:
            return set()
        rows = [
            (
                t.id,
                t.tenant_id,
                t.account_id,
                t.type.value,
                t.status.value,
                t.version,
                t.amount_minor,
                t.currency,
                t.country,
                t.idempotency_key,
                t.payload_hash,
                t.payment_method,
                Json(dict(t.metadata)),
                t.destination_ciphertext,
                t.destination_key_id,
                t.destination_masked,
            )
            for t in txns
        ]
        inserted = await self._rows(_ADD_TRANSACTIONS, (Rows(rows),))
        return {row[0] for row in inserted}

    async def lock_transactions(
        self, ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, TransactionRecord]:
        if not ids:
            return {}
        rows = await self._rows(_LOCK_TRANSACTIONS, (list(ids),))
        return {row[0]: _transaction(row) for row in rows}

    async def lock_with_attempts(
        self, ids: Collection[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, TransactionRecord], dict[uuid.UUID, list[AttemptRecord]]]:
        if not ids:
            return {}, {}
        # Both statements go in one round trip; the transactions' locks come first.
        txn_rows = self._q.add(_LOCK_TRANSACTIONS, (list(ids),))
        attempt_rows = self._q.add(_ATTEMPTS + " FOR UPDATE", (list(ids),))
        txns = {row[0]: _transaction(row) for row in await txn_rows.rows()}
        attempts: dict[uuid.UUID, list[AttemptRecord]] = {i: [] for i in ids}
        for row in await attempt_rows.rows():
            attempts[row[2]].append(_attempt(row))
        return txns, attempts

    async def transaction(self, txn_id: uuid.UUID) -> TransactionRecord | None:
        rows = await self._rows(_TRANSACTION, (txn_id,))
        return _transaction(rows[0]) if rows else None

    async def routing(
        self, country: str, kind: TransactionType
    ) -> tuple[list[Route], list[TenantConnection]]:
        """From the process's configuration cache when it is current (see config_cache)."""
        version = await self.version()
        routes_key = ("routes", country, kind)
        routes: list[Route] | None = self._config.get(routes_key)
        if routes is None:
            rows = await self._rows(_ROUTES, (country, kind.value))
            routes = self._config.put(routes_key, [_route(r) for r in rows], read_at=version)
        connections_key = ("connections", self.tenant)
        connections: list[TenantConnection] | None = self._config.get(connections_key)
        if connections is None:
            rows = await self._rows(_CONNECTIONS, (self.tenant,))
            connections = self._config.put(
                connections_key,
                [TenantConnection(r[0], r[1], r[2], r[3]) for r in rows],
                read_at=version,
            )
        return routes, connections

    async def apply(self, transitions: Sequence[Transition], *, source: str) -> set[uuid.UUID]:
        refused: set[uuid.UUID] = set()
        for chunk in _one_per_transaction(transitions):
            refused |= await self._apply(chunk, source)
        return refused

    async def _apply(self, transitions: Sequence[Transition], source: str) -> set[uuid.UUID]:
        """Apply transitions of distinct transactions (a row is updated once per statement)."""
        refused = await self._post(transitions)
        applied = [t for t in transitions if t.after.id not in refused]
        if not applied:
            return refused
        rows = [
            (
                t.after.id,
                t.after.status.value,
                t.after.version,
                t.at,
                t.after.gateway_code,
                t.after.provider_reference,
                t.after.failure_code,
                t.after.failure_message,
            )
            for t in applied
        ]
        expected = {t.after.id for t in applied}

        def all_updated(updated: list[Any]) -> None:
            missing = expected - {row[0] for row in updated}
            if missing:
                raise ConcurrentChange(f"transactions changed under their lock: {sorted(missing)}")

        self._check_later(self._q.add(_UPDATE_TRANSACTIONS, (Rows(rows),)), all_updated)
        await self._outcomes(applied, source)
        return refused

    async def _post(self, transitions: Sequence[Transition]) -> set[uuid.UUID]:
        """Ledger legs and balances of every money event, in list order; returns the
        transactions whose hold was refused. Holds go in waves (the n-th hold of each
        balance in wave n), so two holds on one balance apply one after the other. Every
        other posting adds to a balance or moves a hold it placed, so it cannot be refused
        unless the books are wrong: those are summed per balance into one statement."""
        money = [t for t in transitions if t.money is not None]
        if not money:
            return set()
        holds = [t for t in money if t.hold]
        others = [t for t in money if not t.hold]
        if holds:  # a hold needs its row to exist: it is refused, not inserted negative
            pairs = sorted({_balance(t) for t in money})
            self._q.add(_ENSURE_BALANCES, (self.tenant, Rows(pairs)))
        if {_balance(t) for t in holds} & {_balance(t) for t in others}:
            # A hold and another posting on one balance in one call: their order matters.
            # No path does this today; if one ever does, post one by one, in order.
            waves, others = [[t] for t in money], []
        else:
            waves = _waves(holds)
        refused: set[uuid.UUID] = set()
        for wave in waves:
            done = await self._post_together(wave)
            refused |= {t.after.id for t in wave if _balance(t) not in done}
        # Credits and moves of a hold this transaction placed: never refused unless the
        # books are wrong, so they are checked just before the commit.
        credits = [t for t in others if _credits_only(t)]
        await self._post_checked(credits, upsert=True)
        await self._post_checked([t for t in others if not _credits_only(t)], upsert=False)
        wrong = [t.after.id for t in money if t.after.id in refused and not t.hold]
        if wrong:
            raise PostingRefused(f"postings refused for {sorted(wrong)}")
        ledger = [
            (t.after.id, t.after.account_id, leg.bucket.value, t.after.currency, leg.amount_minor)
            for t in money
            if t.after.id not in refused and t.money is not None
            for leg in legs(t.money, t.after.amount_minor)
        ]
        if ledger:
            self._q.add(_ADD_LEDGER, (self.tenant, Rows(ledger)))
        return refused

    async def _post_checked(self, transitions: Sequence[Transition], *, upsert: bool) -> None:
        if not transitions:
            return
        wanted = {_balance(t) for t in transitions}

        def all_posted(done: list[Any]) -> None:
            missing = wanted - {(row[0], row[1]) for row in done}
            if missing:
                raise PostingRefused(f"postings would take balances below zero: {sorted(missing)}")

        self._check_later(self._post_statement(transitions, upsert=upsert), all_posted)

    async def _post_together(self, transitions: Sequence[Transition]) -> set[tuple[str, str]]:
        """Post in one statement, each balance once (deltas summed); returns the balances
        whose update went through (all of a balance's postings, or none)."""
        done = await self._post_statement(transitions).rows()
        return {(row[0], row[1]) for row in done}

    def _post_statement(self, transitions: Sequence[Transition], *, upsert: bool = False) -> Result:
        deltas: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for t in transitions:
            assert t.money is not None
            available, held = balance_deltas(t.money, t.after.amount_minor)
            delta = deltas[(t.after.account_id, t.after.currency)]
            delta[0] += available
            delta[1] += held
        rows = [(a, c, d[0], d[1]) for (a, c), d in sorted(deltas.items())]
        if upsert:
            return self._q.add(_UPSERT_POSTINGS, (self.tenant, Rows(rows)))
        return self._q.add(_POST, (Rows(rows), self.tenant))

    async def _outcomes(self, applied: Sequence[Transition], source: str) -> None:
        """One outcome event per new version, validated here, where a bug can still roll
        the state change back, so the relay never meets a row it cannot publish."""
        rows = []
        for t in applied:
            outcome = outcome_of(t.after, at=t.at, redirect_url=t.redirect_url)
            data = outcome.data()
            self._registry.validate(outcome.EVENT_TYPE, data)
            key = t.after.account_id
            rows.append(
                (
                    OUTCOMES,
                    key,
                    shard_for(key),
                    outcome.event_id(),
                    outcome.EVENT_TYPE,
                    source,
                    t.at,
                    Json(data),
                    traceparent_for(t.after.id),
                )
            )
        self._q.add(_ADD_OUTBOX, (self.tenant, Rows(rows)))

    # --- attempts ----------------------------------------------------------------------------

    async def attempts(
        self, txn_ids: Collection[uuid.UUID], *, lock: bool = False
    ) -> dict[uuid.UUID, list[AttemptRecord]]:
        found: dict[uuid.UUID, list[AttemptRecord]] = {txn: [] for txn in txn_ids}
        if not txn_ids:
            return found
        sql = _ATTEMPTS + (" FOR UPDATE" if lock else "")
        for row in await self._rows(sql, (list(txn_ids),)):
            found[row[2]].append(_attempt(row))
        return found

    async def add_attempts(
        self, attempts: Sequence[AttemptRecord], *, contested: bool = True
    ) -> set[uuid.UUID]:
        if not attempts:
            return set()
        rows = [
            (
                a.id,
                a.tenant_id,
                a.transaction_id,
                a.seq,
                a.gateway_code,
                a.connection_id,
                a.idempotency_key,
                a.status.value,
                a.route_reason,
            )
            for a in attempts
        ]
        if not contested:  # nobody else can have recorded these: no need to wait for it
            self._q.add(_ADD_ATTEMPTS, (Rows(rows),))
            return {a.id for a in attempts}
        inserted = await self._rows(_ADD_ATTEMPTS, (Rows(rows),))
        return {row[0] for row in inserted}

    async def save_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        if not attempts:
            return
        rows = [
            (
                a.id,
                a.status.value,
                a.provider_reference,
                a.error_class,
                a.error_code,
                a.error_message,
                a.finished_at,
            )
            for a in attempts
        ]
        self._q.add(_SAVE_ATTEMPTS, (Rows(rows),))

    async def restart_attempts(self, attempt_ids: Collection[uuid.UUID]) -> None:
        if attempt_ids:
            self._q.add(_RESTART_ATTEMPTS, (list(attempt_ids),))

    async def started_for(self, attempt_id: uuid.UUID, *, age_s: float) -> bool:
        rows = await self._rows(_STARTED_FOR, (attempt_id, age_s))
        return bool(rows[0][0])

    async def find_attempts(self, keys: Collection[AttemptKey]) -> dict[AttemptKey, AttemptRecord]:
        if not keys:
            return {}
        rows = await self._rows(_FIND_ATTEMPTS, _named(keys))
        return match_attempts(keys, [_attempt(row) for row in rows])

    async def find_and_lock(
        self, keys: Collection[AttemptKey]
    ) -> tuple[
        dict[AttemptKey, AttemptRecord],
        dict[uuid.UUID, TransactionRecord],
        dict[uuid.UUID, list[AttemptRecord]],
    ]:
        if not keys:
            return {}, {}, {}
        named = _named(keys)
        txn_rows = self._q.add(_LOCK_NAMED, named)
        attempt_rows = self._q.add(_ATTEMPTS_NAMED, named)
        txns = {row[0]: _transaction(row) for row in await txn_rows.rows()}
        # An attempt recorded between the two statements, of a transaction the first did
        # not lock, is left out: its report is an orphan, as if it had come a moment sooner.
        attempts: dict[uuid.UUID, list[AttemptRecord]] = {i: [] for i in txns}
        for row in await attempt_rows.rows():
            if row[2] in attempts:
                attempts[row[2]].append(_attempt(row))
        found = match_attempts(keys, [a for group in attempts.values() for a in group])
        return found, txns, attempts

    # --- callbacks ---------------------------------------------------------------------------

    async def first_seen(self, consumer: str, message_ids: Collection[str]) -> set[str]:
        if not message_ids:
            return set()
        ids = Rows([(m,) for m in message_ids])
        rows = await self._rows(_FIRST_SEEN, (consumer, self.tenant, ids))
        return {row[0] for row in rows}

    async def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        if not anomalies:
            return
        rows = [
            (
                a.transaction_id,
                a.connection_id,
                a.source,
                a.kind,
                a.provider_event_id,
                a.transaction_status,
                a.reported_status,
                a.detail,
            )
            for a in anomalies
        ]
        self._q.add(_ADD_ANOMALIES, (self.tenant, Rows(rows)))

    async def park(self, parked: Sequence[ParkedCallback]) -> None:
        if not parked:
            return
        rows = [
            (
                p.connection_id,
                p.gateway_code,
                p.provider_event_id,
                p.provider_reference,
                p.reference,
                p.body,
                p.body_encoding,
                p.received_at,
            )
            for p in parked
        ]
        self._q.add(_PARK, (self.tenant, Rows(rows)))

    async def parked_due(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        return [(row[0], row[1]) for row in await self._rows(_PARKED_DUE, (limit,))]

    async def lock_parked(self, parked_id: int) -> ParkedCallback | None:
        rows = await self._rows(_LOCK_PARKED, (parked_id,))
        return _parked(rows[0]) if rows else None

    async def save_parked(self, parked: ParkedCallback) -> None:
        self._q.add(
            _SAVE_PARKED,
            (parked.tries, parked.next_try_at, parked.resolved_at, parked.resolution, parked.id),
        )

    # --- reconciliation ----------------------------------------------------------------------

    async def reconcile_due(
        self, *, pending_age_s: float, action_expiry_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        rows = await self._rows(_RECONCILE_DUE, (pending_age_s, action_expiry_s, limit))
        return [(row[0], row[1]) for row in rows]

    async def processing_due(
        self, *, age_s: float, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        rows = await self._rows(_PROCESSING_DUE, (age_s, limit))
        return [(row[0], row[1]) for row in rows]

    async def resubmit(
        self, txns: Sequence[TransactionRecord], *, source: str, at: datetime, nonce: str
    ) -> None:
        if not txns:
            return
        rows = []
        for txn in txns:
            command = command_of(txn)
            data = command.data()
            # Validated here, where a bug still rolls the unit back: the relay never meets a
            # row it cannot publish, and the worker never a command it must dead-letter.
            self._registry.validate(command.EVENT_TYPE, data)
            key = txn.account_id
            event_id = resubmission_id(txn, nonce)
            rows.append(
                (
                    COMMANDS,
                    key,
                    shard_for(key),
                    event_id,
                    command.EVENT_TYPE,
                    source,
                    at,
                    Json(data),
                    None,
                )
            )
        self._q.add(_ADD_OUTBOX, (self.tenant, Rows(rows)))

    async def route_health(self, window_s: float) -> Health:
        return health_of(await self._rows(ROUTE_HEALTH_SQL, (window_s,)))

    async def unresolved_count(self, *, horizon_s: float, stuck_processing_s: float) -> int:
        rows = await self._rows(_UNRESOLVED, (horizon_s, stuck_processing_s))
        return int(rows[0][0])

    async def reconciliation(self, txn_id: uuid.UUID) -> ReconciliationRecord:
        self._q.add(_ADD_RECONCILIATION, (txn_id, self.tenant))
        row = (await self._rows(_LOCK_RECONCILIATION, (txn_id,)))[0]
        return ReconciliationRecord(*row)

    async def save_reconciliation(self, record: ReconciliationRecord) -> None:
        self._q.add(
            _SAVE_RECONCILIATION,
            (
                record.lookups,
                record.next_lookup_at,
                record.last_lookup_at,
                record.last_result,
                record.reported_at,
                record.transaction_id,
            ),
        )


def command_of(txn: TransactionRecord) -> Command:
    """The command that created `txn`, rebuilt from its row (which keeps every field the
    worker needs, a withdrawal's destination still sealed). Its id and payload hash are the
    original's, so the worker finds the stored transaction and resumes it, as for a
    redelivery. `requested_at` becomes the row's creation time (nothing reads it again)."""
    if txn.created_at is None:
        raise ValueError(f"transaction {txn.id} has no creation time: not a stored row")
    fields: dict[str, Any] = {
        "transaction_id": txn.id,
        "tenant_id": txn.tenant_id,
        "idempotency_key": txn.idempotency_key,
        "payload_hash": txn.payload_hash,
        "account_id": txn.account_id,
        "country": txn.country,
        "amount_minor": txn.amount_minor,
        "currency": txn.currency,
        "requested_at": txn.created_at,
        "payment_method": txn.payment_method,
        "metadata": dict(txn.metadata),
    }
    if txn.type == TransactionType.DEPOSIT:
        return RequestDeposit(**fields)
    if txn.destination_ciphertext is None or txn.destination_key_id is None:
        raise ValueError(f"withdrawal {txn.id} has no sealed destination")
    destination = SealedDestination(
        bytes(txn.destination_ciphertext), txn.destination_key_id, txn.destination_masked or ""
    )
    return RequestWithdrawal(**fields, destination=destination)


def resubmission_id(txn: TransactionRecord, nonce: str) -> uuid.UUID:
    """The event id of one resubmission of `txn`'s command (the outbox's ids are unique)."""
    return uuid.uuid5(PAYSTREAM_NAMESPACE, f"resubmitted|{txn.id}|{txn.payload_hash}|{nonce}")


def _named(keys: Collection[AttemptKey]) -> tuple[list[uuid.UUID], list[str], list[str]]:
    """The connections, our keys and the provider's references that `keys` name."""
    return (
        list({k.connection_id for k in keys}),
        list({k.reference for k in keys if k.reference}),
        list({k.provider_reference for k in keys if k.provider_reference}),
    )


def _balance(t: Transition) -> tuple[str, str]:
    return t.after.account_id, t.after.currency


def _credits_only(t: Transition) -> bool:
    """No leg takes from the user's balances (a deposit credit): the row may be created."""
    assert t.money is not None
    return min(balance_deltas(t.money, t.after.amount_minor)) >= 0


def _one_per_transaction(transitions: Sequence[Transition]) -> list[list[Transition]]:
    """Consecutive chunks in which each transaction appears once, order kept."""
    chunks: list[list[Transition]] = []
    seen: set[uuid.UUID] = set()
    for t in transitions:
        if not chunks or t.after.id in seen:
            chunks.append([])
            seen = set()
        chunks[-1].append(t)
        seen.add(t.after.id)
    return chunks


def _waves(holds: Sequence[Transition]) -> list[list[Transition]]:
    """Wave n holds the n-th hold of each balance, in list order."""
    waves: list[list[Transition]] = []
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for t in holds:
        balance = _balance(t)
        n = seen[balance]
        seen[balance] += 1
        if n == len(waves):
            waves.append([])
        waves[n].append(t)
    return waves


class PgPaymentStore:
    """`paystream_core.ports.PaymentStore` on the hot-path connection pool.

    `config` is the process's configuration cache: each unit refreshes its version."""

    def __init__(
        self, pool: HotPool, registry: SchemaRegistry, config: ConfigCache | None = None
    ) -> None:
        self._pool = pool
        self._registry = registry
        self.config = config or ConfigCache()

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def unit(self, tenant_id: uuid.UUID | None) -> AsyncIterator[PgPaymentUnit]:
        # BEGIN and COMMIT are queued like any statement (psycopg's transaction() block
        # costs two extra round trips). If the block raises, what is still queued is never
        # sent, and a connection left inside a transaction is rolled back by the pool.
        async with self._pool.connection() as conn:
            queue = StatementQueue(conn)
            queue.add("BEGIN")
            scope = queue.add(_SCOPE, (APP_ROLE, str(tenant_id or "")))
            unit = PgPaymentUnit(queue, tenant_id, self._registry, self.config, scope)
            yield unit
            await unit.verify()
            await unit.version()  # observe it, even if nothing needed it
            queue.add("COMMIT")
            await queue.flush()
