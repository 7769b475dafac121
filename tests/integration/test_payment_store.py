"""The payment port on a real PostgreSQL: set-based postings (holds in order, credits that
create their balance row, settlements and releases), the row counts checked before the
commit, inserts that skip what exists, and the configuration cache following the version."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest

from paystream_config import DatabaseSettings
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_core.transitions import Transition, transition
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.payments import ConcurrentChange, PgPaymentStore
from paystream_storage.pool import HotPool
from tests.support.databases import libpq

pytestmark = pytest.mark.integration

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PgPaymentStore]:
    store = PgPaymentStore(HotPool(DatabaseSettings(database_url=database_url)), SchemaRegistry())
    yield store
    await store.close()


def _seed(database_url: str) -> uuid.UUID:
    tenant = uuid.uuid4()
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, str(tenant)))
    return tenant


def _txn(
    tenant: uuid.UUID, kind: TransactionType, amount: int, account: str = "a1"
) -> TransactionRecord:
    return TransactionRecord(
        id=uuid.uuid4(),
        tenant_id=tenant,
        account_id=account,
        type=kind,
        status=Status.RECEIVED,
        version=1,
        amount_minor=amount,
        currency="EUR",
        country="DE",
        idempotency_key=str(uuid.uuid4()),
        payload_hash="h",
    )


def _to(txn: TransactionRecord, status: Status, **kw: object) -> Transition:
    move = transition(txn, status, at=AT, **kw)  # type: ignore[arg-type]
    assert move is not None
    return move


def _balance(database_url: str, tenant: uuid.UUID, account: str = "a1") -> tuple[int, int] | None:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT available_minor, held_minor FROM balances WHERE tenant_id = %s"
            " AND account_id = %s",
            (tenant, account),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


async def _store(store: PgPaymentStore, tenant: uuid.UUID, *txns: TransactionRecord) -> None:
    async with store.unit(tenant) as unit:
        await unit.add_accounts([(t.account_id, t.country) for t in txns])
        assert await unit.add_transactions(txns) == {t.id for t in txns}


async def test_a_credit_creates_its_balance_row_and_holds_apply_in_order(
    store: PgPaymentStore, database_url: str
) -> None:
    tenant = _seed(database_url)
    deposit = _txn(tenant, TransactionType.DEPOSIT, 1500)
    w1 = _txn(tenant, TransactionType.WITHDRAWAL, 1000)
    w2 = _txn(tenant, TransactionType.WITHDRAWAL, 1000)
    await _store(store, tenant, deposit, w1, w2)
    async with store.unit(tenant) as unit:
        processing = _to(deposit, Status.PROCESSING)
        assert await unit.apply([processing], source="/t") == set()
        assert await unit.apply([_to(processing.after, Status.SUCCEEDED)], source="/t") == set()
    assert _balance(database_url, tenant) == (1500, 0), "the credit created the row"
    async with store.unit(tenant) as unit:
        # Two holds on one balance in one call: the first fits, the second finds it taken.
        refused = await unit.apply(
            [_to(w1, Status.PROCESSING), _to(w2, Status.PROCESSING)], source="/t"
        )
    assert refused == {w2.id}
    assert _balance(database_url, tenant) == (500, 1000)
    with psycopg.connect(libpq(database_url)) as conn:
        legs = conn.execute(
            "SELECT transaction_id, sum(amount_minor) FROM ledger_entries GROUP BY 1"
        ).fetchall()
        statuses: dict[uuid.UUID, str] = dict(
            conn.execute("SELECT id, status FROM transactions").fetchall()
        )
    assert all(total == 0 for _, total in legs), "every posting's legs sum to zero"
    assert w2.id not in {txn for txn, _ in legs}, "a refused hold posts nothing"
    assert statuses[w2.id] == "received", "and its transition was not applied"


async def test_settle_and_release_move_the_hold(store: PgPaymentStore, database_url: str) -> None:
    tenant = _seed(database_url)
    deposit = _txn(tenant, TransactionType.DEPOSIT, 5000)
    ok, ko = (
        _txn(tenant, TransactionType.WITHDRAWAL, 1000),
        _txn(tenant, TransactionType.WITHDRAWAL, 700),
    )
    await _store(store, tenant, deposit, ok, ko)
    async with store.unit(tenant) as unit:
        d = _to(deposit, Status.PROCESSING)
        await unit.apply([d], source="/t")
        await unit.apply([_to(d.after, Status.SUCCEEDED)], source="/t")
    async with store.unit(tenant) as unit:
        held = [_to(ok, Status.PROCESSING), _to(ko, Status.PROCESSING)]
        assert await unit.apply(held, source="/t") == set()
    assert _balance(database_url, tenant) == (3300, 1700)
    async with store.unit(tenant) as unit:
        await unit.apply(
            [
                _to(held[0].after, Status.SUCCEEDED),
                _to(held[1].after, Status.FAILED, failure=("declined", "no")),
            ],
            source="/t",
        )
    assert _balance(database_url, tenant) == (4000, 0), "1000 paid out, 700 back"


async def test_a_transaction_changed_under_the_unit_rolls_everything_back(
    store: PgPaymentStore, database_url: str
) -> None:
    tenant = _seed(database_url)
    deposit = _txn(tenant, TransactionType.DEPOSIT, 100)
    await _store(store, tenant, deposit)
    stale = _to(deposit, Status.PROCESSING)
    async with store.unit(tenant) as unit:
        await unit.apply([stale], source="/t")
    # Built from version 1 while the row is at version 2: the update finds no row at that
    # version (and the outcome event of version 2 exists already): the unit must fail.
    with pytest.raises((ConcurrentChange, psycopg.errors.UniqueViolation)):
        async with store.unit(tenant) as unit:
            await unit.apply([_to(deposit, Status.PROCESSING)], source="/t")
    with psycopg.connect(libpq(database_url)) as conn:
        [(outbox,)] = conn.execute("SELECT count(*) FROM outbox").fetchall()
    assert outbox == 1, "the second unit's outcome event was rolled back with it"


async def test_inserts_skip_what_exists_and_a_lone_attempt_wins(
    store: PgPaymentStore, database_url: str
) -> None:
    tenant = _seed(database_url)
    txn = _txn(tenant, TransactionType.DEPOSIT, 100)
    await _store(store, tenant, txn)
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies)"
            " VALUES ('g', 'json', 'g', '{EUR}')"
        )
        conn.execute(
            "INSERT INTO connections (id, tenant_id, gateway_code, code, credentials_ciphertext,"
            " credentials_key_id) VALUES (%s, %s, 'g', 'main', '\\x00', 'k')",
            (connection := uuid.uuid4(), tenant),
        )

    def attempt() -> AttemptRecord:
        return AttemptRecord(
            id=uuid.uuid4(),
            tenant_id=tenant,
            transaction_id=txn.id,
            seq=1,
            gateway_code="g",
            connection_id=connection,
            idempotency_key=f"ps-{txn.id}-1",
            status=AttemptStatus.STARTED,
        )

    async with store.unit(tenant) as unit:
        assert await unit.add_transactions([txn]) == set(), "it exists: not inserted again"
        first = attempt()
        assert await unit.add_attempts([first]) == {first.id}
        assert await unit.add_attempts([attempt()]) == set(), "seq 1 is taken"
        txns, attempts = await unit.lock_with_attempts([txn.id])
    assert txns[txn.id].version == 1
    assert [a.id for a in attempts[txn.id]] == [first.id]


async def test_the_configuration_cache_follows_the_version(
    store: PgPaymentStore, database_url: str
) -> None:
    tenant = _seed(database_url)
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies)"
            " VALUES ('g', 'json', 'g', '{EUR}')"
        )
        conn.execute(
            "INSERT INTO gateway_countries (gateway_code, country, transaction_type, priority)"
            " VALUES ('g', 'DE', 'deposit', 1)"
        )
    async with store.unit(tenant) as unit:
        routes, _ = await unit.routing("DE", TransactionType.DEPOSIT)
    assert [r.enabled for r in routes] == [True]
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("UPDATE gateways SET enabled = false WHERE code = 'g'")  # gateways down
    async with store.unit(tenant) as unit:
        routes, _ = await unit.routing("DE", TransactionType.DEPOSIT)
    assert [r.enabled for r in routes] == [False], "the next unit sees the change"
