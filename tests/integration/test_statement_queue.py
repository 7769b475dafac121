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


async def test_row_sets_join_by_index_not_by_scanning_whole_tables(database_url: str) -> None:
    """A set of rows is estimated at 10 (paystream_rows, migration 0015), so updating a few
    transactions looks them up by key: with jsonb_array_elements' fixed estimate of 100 the
    planner hashed a sequential scan of the whole table, in every unit."""
    async with await psycopg.AsyncConnection.connect(libpq(database_url), autocommit=True) as conn:
        tenant = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,))
        await conn.execute(
            "INSERT INTO accounts (tenant_id, id, country)"
            " SELECT %s, 'a' || g, 'DE' FROM generate_series(1, 5000) AS g",
            (tenant,),
        )
        await conn.execute(
            "INSERT INTO transactions (id, tenant_id, account_id, type, status, version,"
            " amount_minor, currency, country, idempotency_key, payload_hash)"
            " SELECT gen_random_uuid(), %s, 'a' || g, 'deposit', 'processing', 1, 100, 'EUR',"
            " 'DE', 'k' || g, 'h' FROM generate_series(1, 5000) AS g",
            (tenant,),
        )
        await conn.execute("ANALYZE transactions")
        # The two statements that join a row set to transactions (the table filled here).
        for name in ("_UPDATE_TRANSACTIONS", "_ADD_ATTEMPTS"):
            sql = getattr(payments, name)
            count = sql.count("%s")
            body = sql % tuple(f"${i + 1}" for i in range(count))
            await conn.execute(f"PREPARE check_plan AS {body}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            cursor = await conn.execute(
                f"EXPLAIN EXECUTE check_plan({', '.join(['NULL'] * count)})"
            )
            plan = "\n".join(row[0] for row in await cursor.fetchall())
            await conn.execute("DEALLOCATE check_plan")
            assert "Seq Scan on transactions" not in plan, (name, plan)
