"""Queued statements on a real PostgreSQL (paystream_storage.statements): values come back
as they went in, results come back to their own statement, and a failing statement stops
its batch and raises."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from paystream_storage import payments
from paystream_storage.statements import Json, Rows, StatementQueue, rowset
from tests.support.databases import libpq

pytestmark = pytest.mark.integration

COLUMNS = rowset("uuid", "text", "bigint", "bytea", "jsonb", "timestamptz")

AWKWARD = [
    "it's",
    "back\\slash \\' \\\\",
    "E'x' || 'y'",
    "%s %(name)s %%",
    "ünïcødé ✓ 💸",
    "line\nbreak\ttab",
    "'; DROP TABLE t; --",
    "",
]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(libpq(database_url), autocommit=True) as conn:
        await conn.execute(
            "CREATE TEMP TABLE t (id uuid, s text, n bigint, b bytea, j jsonb, at timestamptz)"
        )
        yield conn


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_values_round_trip_as_literals_and_row_sets(
    conn: psycopg.AsyncConnection[Any], conforming: str
) -> None:
    await conn.execute(f"SET standard_conforming_strings = {conforming}")
    at = datetime(2026, 12, 7, 3, 4, 5, 123456, tzinfo=UTC)
    rows = [
        (uuid.uuid4(), s, i - 2**40, s.encode() + b"\x00\xff", Json({"s": s, "n": [i]}), at)
        for i, s in enumerate(AWKWARD)
    ] + [(uuid.uuid4(), None, None, None, None, None)]
    queue = StatementQueue(conn)
    queue.add(
        f"INSERT INTO t SELECT * FROM {COLUMNS} AS v",
        (Rows(rows),),
    )
    scalars = queue.add(
        "SELECT %s::text, %s::text, %s::text, %s::text, %s::jsonb", (*AWKWARD[:4], Json(AWKWARD))
    )
    stored = queue.add(
        "SELECT id, s, n, b, j, at FROM t WHERE id = ANY(%s::uuid[])", ([r[0] for r in rows],)
    )
    empty = queue.add("SELECT count(*) FROM t WHERE id = ANY(%s::uuid[])", ([],))
    assert await scalars.rows() == [(*AWKWARD[:4], AWKWARD)]
    got = {r[0]: r for r in await stored.rows()}
    for row in rows:
        want = (*row[:4], row[4].value if isinstance(row[4], Json) else None, row[5])
        assert got[row[0]] == want
    assert await empty.rows() == [(0,)]


async def test_results_go_to_their_statement_and_a_failure_stops_the_batch(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    queue = StatementQueue(conn)
    queue.add("BEGIN")
    first = queue.add("SELECT %s::int", (1,))
    nothing = queue.add("INSERT INTO t (s) VALUES (%s)", ("kept?",))
    second = queue.add("SELECT g FROM generate_series(1, %s) AS g", (3,))
    assert await second.rows() == [(1,), (2,), (3,)]
    assert await first.rows() == [(1,)]
    assert await nothing.rows() == []

    queue.add("INSERT INTO t (s) VALUES (%s)", ("after",))
    failing = queue.add("SELECT 1 / %s::int", (0,))
    never = queue.add("INSERT INTO t (s) VALUES (%s)", ("never",))
    with pytest.raises(psycopg.errors.DivisionByZero):
        await failing.rows()
    with pytest.raises(RuntimeError, match="must roll back"):
        await never.rows()
    await conn.execute("ROLLBACK")
    cursor = await conn.execute("SELECT count(*) FROM t")
    assert await cursor.fetchall() == [(0,)]


async def test_statements_are_prepared_once_per_connection_even_after_a_failed_batch(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    async def prepared() -> set[str]:
        cursor = await conn.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in await cursor.fetchall()}

    queue = StatementQueue(conn)
    select = "SELECT %s::bigint + 1"
    assert await queue.add(select, (1,)).rows() == [(2,)]
    names = await prepared()
    assert len(names) == 1
    # A batch that fails after preparing a second statement: PREPARE is not undone by the
    # rollback, and the queue no longer trusts what it knows about this connection.
    queue.add("BEGIN")
    queue.add("SELECT %s::text || 'x'", ("a",))
    failing = queue.add("SELECT 1 / %s::int", (0,))
    with pytest.raises(psycopg.errors.DivisionByZero):
        await failing.rows()
    await conn.execute("ROLLBACK")
    assert len(await prepared()) == 3
    # The next batches use all three without preparing any again (a second PREPARE of a
    # name would fail the batch).
    again = StatementQueue(conn)
    a = again.add(select, (41,))
    b = again.add("SELECT %s::text || 'x'", ("b",))
    c = again.add("SELECT 1 / %s::int", (1,))
    assert (await a.rows(), await b.rows(), await c.rows()) == ([(42,)], [("bx",)], [(1,)])
    assert len(await prepared()) == 3


# Tables the payment units read or change by key, filled here: a sequential scan of one of
# them grows with the table, in every unit.
_KEYED = ("transactions", "attempts", "balances", "accounts")


def _unit_statements() -> list[tuple[str, str]]:
    """Every statement of the payment units: the module's SQL constants with parameters."""
    found = [
        (name, value)
        for name, value in vars(payments).items()
        if name.startswith("_")
        and name.isupper()
        and isinstance(value, str)
        and "%s" in value
        and value.split(None, 1)[0].upper() in {"SELECT", "INSERT", "UPDATE", "WITH"}
    ]
    found.append(("_ATTEMPTS FOR UPDATE", payments._ATTEMPTS + " FOR UPDATE"))
    return found


async def test_no_unit_statement_scans_a_whole_table_in_its_generic_plan(
    database_url: str,
) -> None:
    """Each unit statement is prepared once per connection, and after five executions
    PostgreSQL may keep a generic plan, made without the parameters' values, as the app
    role under row-level security. Two things made those plans scan whole tables: row sets
    estimated at 100 rows (jsonb_array_elements; paystream_rows, migration 0015, says 10),
    and row-set columns flattened into join conditions, which under row-level security
    cannot be index conditions because ->> and the casts are not leakproof (rowset's
    OFFSET 0). Both grew PostgreSQL's CPU per payment with the table."""
    async with await psycopg.AsyncConnection.connect(
        libpq(database_url), autocommit=True, prepare_threshold=None
    ) as conn:
        tenant, connection = uuid.uuid4(), uuid.uuid4()
        for sql, params in [
            ("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,)),
            ("INSERT INTO countries VALUES ('DE', 'Germany') ON CONFLICT DO NOTHING", ()),
            (
                "INSERT INTO gateways (code, provider, name, currencies)"
                " VALUES ('stripe', 'stripe', 'Stripe', '{EUR}') ON CONFLICT DO NOTHING",
                (),
            ),
            (
                "INSERT INTO connections (id, tenant_id, gateway_code, code,"
                " credentials_ciphertext, credentials_key_id)"
                " VALUES (%s, %s, 'stripe', 'main', '\\x00', 'k1')",
                (connection, tenant),
            ),
            (
                "INSERT INTO accounts (tenant_id, id, country)"
                " SELECT %s, 'a' || g, 'DE' FROM generate_series(1, 5000) AS g",
                (tenant,),
            ),
            (
                "INSERT INTO balances (tenant_id, account_id, currency)"
                " SELECT %s, 'a' || g, 'EUR' FROM generate_series(1, 5000) AS g",
                (tenant,),
            ),
            (
                "INSERT INTO transactions (id, tenant_id, account_id, type, status, version,"
                " amount_minor, currency, country, idempotency_key, payload_hash,"
                " provider_reference)"
                " SELECT gen_random_uuid(), %s, 'a' || g, 'deposit', 'processing', 1, 100,"
                " 'EUR', 'DE', 'k' || g, 'h', 'ref' || g FROM generate_series(1, 5000) AS g",
                (tenant,),
            ),
            (
                "INSERT INTO attempts (id, tenant_id, transaction_id, seq, gateway_code,"
                " connection_id, idempotency_key, status, provider_reference)"
                " SELECT gen_random_uuid(), tenant_id, id, 1, 'stripe', %s, 'i' || id,"
                " 'pending', provider_reference FROM transactions WHERE tenant_id = %s",
                (connection, tenant),
            ),
        ]:
            await conn.execute(sql, params)
        for table in _KEYED:
            await conn.execute(f"ANALYZE {table}")
        scans = {}
        for name, sql in _unit_statements():
            count = sql.count("%s")
            body = sql % tuple(f"${i + 1}" for i in range(count))
            async with conn.transaction(force_rollback=True):
                # As a unit runs: the app role, one tenant in scope (row-level security on).
                await conn.execute(
                    "SELECT set_config('role', 'paystream_app', true),"
                    " set_config('paystream.tenant_id', %s, true)",
                    (str(tenant),),
                )
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await conn.execute(f"PREPARE check_plan AS {body}")
                cursor = await conn.execute(
                    f"EXPLAIN EXECUTE check_plan({', '.join(['NULL'] * count)})"
                )
                plan = "\n".join(row[0] for row in await cursor.fetchall())
                await conn.execute("DEALLOCATE check_plan")
            scanned = [t for t in _KEYED if f"Seq Scan on {t} " in plan]
            if scanned:
                scans[name] = (scanned, plan)
        assert len(_unit_statements()) > 30  # the constants are still found
        assert not scans, scans
