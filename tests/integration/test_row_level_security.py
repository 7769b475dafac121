"""Row-level security: a tenant's session sees only its rows; no tenant set sees none."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import text

from paystream_config import DatabaseSettings
from paystream_storage.db import create_engine, sessionmaker, tenant_session
from paystream_storage.models import TENANT_TABLES
from paystream_storage.tenants import hash_api_key, tenant_for_api_key
from tests.support.databases import libpq

pytestmark = pytest.mark.integration


def _seed_tenant(conn: psycopg.Connection[tuple[object, ...]], name: str) -> uuid.UUID:
    """One row in every tenant table for a new tenant, inserted as the owner."""
    t = uuid.uuid4()
    conn_id, txn = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (t, name))
    conn.execute(
        "INSERT INTO api_keys (id, tenant_id, prefix, key_hash) VALUES (%s, %s, 'psk_', %s)",
        (uuid.uuid4(), t, hash_api_key(f"key-{name}")),
    )
    conn.execute("INSERT INTO accounts (tenant_id, id, country) VALUES (%s, 'acc-1', 'DE')", (t,))
    conn.execute(
        "INSERT INTO connections (id, tenant_id, gateway_code, code, credentials_ciphertext,"
        " credentials_key_id) VALUES (%s, %s, 'stripe', 'main', '\\x00', 'k1')",
        (conn_id, t),
    )
    conn.execute(
        "INSERT INTO transactions (id, tenant_id, account_id, type, status, amount_minor,"
        " currency, country, idempotency_key, payload_hash)"
        " VALUES (%s, %s, 'acc-1', 'deposit', 'received', 100, 'EUR', 'DE', 'k', 'h')",
        (txn, t),
    )
    conn.execute(
        "INSERT INTO attempts (id, tenant_id, transaction_id, seq, gateway_code, connection_id,"
        " idempotency_key, status) VALUES (%s, %s, %s, 1, 'stripe', %s, %s, 'started')",
        (uuid.uuid4(), t, txn, conn_id, f"ps-{txn}-1"),
    )
    for bucket, amount in (("available", 100), ("external", -100)):
        conn.execute(
            "INSERT INTO ledger_entries (tenant_id, transaction_id, account_id, bucket, currency,"
            " amount_minor) VALUES (%s, %s, 'acc-1', %s, 'EUR', %s)",
            (t, txn, bucket, amount),
        )
    conn.execute(
        "INSERT INTO balances (tenant_id, account_id, currency, available_minor)"
        " VALUES (%s, 'acc-1', 'EUR', 100)",
        (t,),
    )
    conn.execute(
        "INSERT INTO outbox (tenant_id, topic, key, shard, event_id, event_type, source,"
        " occurred_at, data) VALUES (%s, 'outcomes', 'acc-1', 0, %s, 'x', 's', now(), '{}')",
        (t, uuid.uuid4()),
    )
    conn.execute(
        "INSERT INTO inbox (consumer, message_id, tenant_id) VALUES ('c', %s, %s)",
        (str(uuid.uuid4()), t),
    )
    conn.execute(
        "INSERT INTO callback_log (tenant_id, connection_id, gateway_code, verdict, headers, body)"
        " VALUES (%s, %s, 'stripe', 'accepted', '{}', '')",
        (t, conn_id),
    )
    conn.execute(
        "INSERT INTO parked_callbacks (tenant_id, connection_id, gateway_code, provider_event_id,"
        " body, body_encoding, received_at) VALUES (%s, %s, 'stripe', 'evt_1', '', 'utf-8', now())",
        (t, conn_id),
    )
    conn.execute(
        "INSERT INTO anomalies (tenant_id, transaction_id, source, kind, detail)"
        " VALUES (%s, %s, 'callback', 'contradiction', 'x')",
        (t, txn),
    )
    conn.execute(
        "INSERT INTO reconciliations (transaction_id, tenant_id) VALUES (%s, %s)", (txn, t)
    )
    conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, payload_hash, transaction_id)"
        " VALUES (%s, 'k', 'h', %s)",
        (t, txn),
    )
    return t


@pytest.fixture
def two_tenants(database_url: str) -> tuple[str, uuid.UUID, uuid.UUID]:
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies)"
            " VALUES ('stripe', 'stripe', 'Stripe', '{EUR}')"
        )
        a = _seed_tenant(conn, "tenant-a")
        b = _seed_tenant(conn, "tenant-b")
    return database_url, a, b


async def _visible(url: str, tenant: uuid.UUID | None) -> dict[str, set[uuid.UUID]]:
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with tenant_session(sessionmaker(engine), tenant) as session:
            seen: dict[str, set[uuid.UUID]] = {}
            for table in TENANT_TABLES:
                column = "id" if table == "tenants" else "tenant_id"
                rows = await session.execute(text(f"SELECT {column} FROM {table}"))
                seen[table] = {r[0] for r in rows}
            return seen
    finally:
        await engine.dispose()


async def test_each_tenant_sees_only_its_rows(
    two_tenants: tuple[str, uuid.UUID, uuid.UUID],
) -> None:
    url, a, b = two_tenants
    for me in (a, b):
        seen = await _visible(url, me)
        for table in TENANT_TABLES:
            assert seen[table] == {me}, f"{table}: tenant {me} sees {seen[table]}"


async def test_no_tenant_sees_nothing(two_tenants: tuple[str, uuid.UUID, uuid.UUID]) -> None:
    url, _, _ = two_tenants
    seen = await _visible(url, None)
    assert all(not rows for rows in seen.values()), seen


async def test_cannot_write_into_another_tenant(
    two_tenants: tuple[str, uuid.UUID, uuid.UUID],
) -> None:
    url, a, b = two_tenants
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        with pytest.raises(Exception, match="row-level security"):
            async with tenant_session(sessionmaker(engine), a) as session:
                await session.execute(
                    text("INSERT INTO accounts (tenant_id, id, country) VALUES (:t, 'x', 'DE')"),
                    {"t": b},
                )
        # Updates through the policy cannot touch the other tenant's rows either.
        async with tenant_session(sessionmaker(engine), a) as session:
            result = await session.execute(
                text("UPDATE balances SET available_minor = 0 WHERE tenant_id = :t"), {"t": b}
            )
            assert getattr(result, "rowcount", None) == 0
    finally:
        await engine.dispose()


async def test_app_role_is_not_the_owner_and_cannot_bypass(
    two_tenants: tuple[str, uuid.UUID, uuid.UUID],
) -> None:
    url, a, _ = two_tenants
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with tenant_session(sessionmaker(engine), a) as session:
            role = (await session.execute(text("SELECT current_user"))).scalar_one()
            assert role == "paystream_app"
            with pytest.raises(Exception, match="must be owner"):
                async with session.begin_nested():
                    await session.execute(text("ALTER TABLE accounts DISABLE ROW LEVEL SECURITY"))
    finally:
        await engine.dispose()


async def test_api_key_lookup_works_without_a_tenant(
    two_tenants: tuple[str, uuid.UUID, uuid.UUID],
) -> None:
    url, a, _ = two_tenants
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with tenant_session(sessionmaker(engine), None) as session:
            assert await tenant_for_api_key(session, "key-tenant-a") == a
            assert await tenant_for_api_key(session, "key-nobody") is None
    finally:
        await engine.dispose()
