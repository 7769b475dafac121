"""The callback log on a real PostgreSQL: the requests of a moment share one transaction,
each tenant's rows are written under that tenant, values arrive as they were sent, and a
group that fails fails every request in it without spoiling the next."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from paystream_config import DatabaseSettings
from paystream_storage.callback_log import CallbackLogEntry, CallbackLogWriter
from paystream_storage.pool import HotPool
from tests.support.databases import libpq

pytestmark = pytest.mark.integration

AWKWARD = ["it's", "back\\slash \\' \\\\", "%s %(x)s %%", "ünïcødé ✓ 💸", "line\nbreak\ttab", ""]


def _seed(database_url: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Two tenants with a connection each: (tenant, connection)."""
    out = []
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies)"
            " VALUES ('jsonpay', 'json', 'JSONPay', '{EUR}')"
        )
        for name in ("a", "b"):
            tenant, connection = uuid.uuid4(), uuid.uuid4()
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, name))
            conn.execute(
                "INSERT INTO connections (id, tenant_id, gateway_code, code,"
                " credentials_ciphertext, credentials_key_id)"
                " VALUES (%s, %s, 'jsonpay', 'main', '\\x00', 'k1')",
                (connection, tenant),
            )
            out.append((tenant, connection))
    return out


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[HotPool]:
    hot = HotPool(DatabaseSettings(database_url=database_url))
    yield hot
    await hot.close()


def _entry(tenant: uuid.UUID, connection: uuid.UUID, i: int) -> CallbackLogEntry:
    text = AWKWARD[i % len(AWKWARD)]
    return CallbackLogEntry(
        tenant_id=tenant,
        connection_id=connection,
        gateway_code="jsonpay",
        provider_event_id=f"evt_{i}" if i % 3 else None,
        verdict="accepted" if i % 2 else "rejected_signature",
        reason=text or None,
        headers={"content-type": "application/json", "x-text": text},
        body=f'{{"i": {i}, "text": "{text}"}}',
    )


async def test_a_group_stores_every_tenants_rows_as_sent(database_url: str, pool: HotPool) -> None:
    (a, conn_a), (b, conn_b) = _seed(database_url)
    writer = CallbackLogWriter(pool, linger_s=0.05)  # long enough for all to join one group
    entries = [_entry(*((a, conn_a) if i % 2 else (b, conn_b)), i) for i in range(12)]
    await asyncio.gather(*(writer.write(e) for e in entries))

    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT tenant_id, connection_id, gateway_code, provider_event_id, verdict, reason,"
            " headers, body, xmin::text FROM callback_log"
        ).fetchall()
    stored = {(r[0], r[7]): r for r in rows}
    assert len(rows) == len(entries)
    for e in entries:
        row = stored[(e.tenant_id, e.body)]
        assert row[1:7] == (
            e.connection_id,
            e.gateway_code,
            e.provider_event_id,
            e.verdict,
            e.reason,
            e.headers,
        )
    assert len({r[8] for r in rows}) == 1  # one transaction for the whole group


async def test_a_failing_group_fails_its_requests_and_the_next_group_is_written(
    database_url: str, pool: HotPool
) -> None:
    (a, conn_a), _ = _seed(database_url)
    writer = CallbackLogWriter(pool, linger_s=0.05)
    good = _entry(a, conn_a, 1)
    # No such connection: the foreign key refuses the row, and with it the whole group.
    orphan = _entry(a, uuid.uuid4(), 2)
    results = await asyncio.gather(writer.write(good), writer.write(orphan), return_exceptions=True)
    assert all(isinstance(r, psycopg.errors.ForeignKeyViolation) for r in results), results

    await writer.write(_entry(a, conn_a, 3))
    with psycopg.connect(libpq(database_url)) as conn:
        bodies = [r[0] for r in conn.execute("SELECT body FROM callback_log").fetchall()]
    assert bodies == [_entry(a, conn_a, 3).body]
