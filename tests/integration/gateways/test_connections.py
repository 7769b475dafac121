"""Connections on real PostgreSQL: encrypted credentials under RLS, secret rotation seen
by the gateway manager, key rotation across tenants."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from paystream_cli.demo_seed import seed_routing
from paystream_config import DatabaseSettings
from paystream_gateways import (
    CallbackRejected,
    ConnectionExists,
    ConnectionNotFound,
    CredentialsUndecryptable,
    GatewayNotFound,
    InvalidCredentials,
    default_registry,
)
from paystream_gateways.connections import ConnectionRepository, open_credentials
from paystream_gateways.manager import DbConnectionSource, GatewayManager
from paystream_gateways.signing import sign
from paystream_keyring import KeyRing, Sealed, count_by_key, rotate_keys
from paystream_storage.db import create_engine, sessionmaker, tenant_session
from paystream_storage.models import Account, Connection, Transaction
from paystream_storage.tenants import create_tenant

pytestmark = pytest.mark.integration

K1, K2 = os.urandom(32), os.urandom(32)
RING_1 = KeyRing({"k1": K1}, "k1")
RING_12 = KeyRing({"k1": K1, "k2": K2}, "k2")
RING_2 = KeyRing({"k2": K2}, "k2")
STRIPE = {"api_key": "sk_test_very_secret_key", "webhook_secret": "whsec_first"}
JSONPAY = {
    "base_url": "http://127.0.0.1:9/jsonpay",
    "merchant_id": "m-1",
    "api_secret": "json-api-secret",
    "webhook_secret": "json-hook-secret",
}


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    t1: uuid.UUID
    t2: uuid.UUID


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    sessions = sessionmaker(engine)
    async with sessions() as session, session.begin():
        await seed_routing(session)
        t1 = (await create_tenant(session, "tenant-one")).id
        t2 = (await create_tenant(session, "tenant-two")).id
    yield Db(engine, sessions, t1, t2)
    await engine.dispose()


def repo(session: AsyncSession, ring: KeyRing = RING_1) -> ConnectionRepository:
    return ConnectionRepository(session, ring, default_registry())


async def test_add_encrypts_and_rls_scopes_connections(db: Db) -> None:
    async with tenant_session(db.sessions, db.t1) as session:
        added = await repo(session).add(db.t1, "stripe", "eu", STRIPE)
        await repo(session).add(db.t1, "jsonpay", "main", JSONPAY)
        listed = await repo(session).list(db.t1)
        creds = repo(session).credentials(await repo(session).get(db.t1, added.id))

    assert [(r.gateway_code, r.code, r.provider, r.version) for r in listed] == [
        ("jsonpay", "main", "json", 1),
        ("stripe", "eu", "stripe", 1),
    ]
    assert creds["api_key"] == "sk_test_very_secret_key"
    assert creds["api_base"] == "https://api.stripe.com"  # default filled in
    assert "very_secret" not in repr(added)
    async with db.sessions() as owner:
        raw = (await owner.execute(select(Connection.credentials_ciphertext))).scalars().all()
    assert all(b"very_secret" not in bytes(blob) and b"json-api" not in bytes(blob) for blob in raw)

    async with tenant_session(db.sessions, db.t2) as session:
        assert await repo(session).list(db.t2) == []
        # Even naming tenant one explicitly, RLS hides its rows from tenant two's session.
        assert await repo(session).list(db.t1) == []
        with pytest.raises(ConnectionNotFound):
            await repo(session).get(db.t1, added.id)


async def test_add_errors_are_typed_and_leave_the_transaction_usable(db: Db) -> None:
    async with tenant_session(db.sessions, db.t1) as session:
        await repo(session).add(db.t1, "stripe", "eu", STRIPE)
        with pytest.raises(ConnectionExists):
            await repo(session).add(db.t1, "stripe", "eu", STRIPE)
        with pytest.raises(GatewayNotFound):
            await repo(session).add(db.t1, "paypal", "eu", STRIPE)
        with pytest.raises(InvalidCredentials, match="missing credential field"):
            await repo(session).add(db.t1, "jsonpay", "x", {"base_url": "http://x"})
        await repo(session).add(db.t1, "stripe", "us", STRIPE)  # still usable after the savepoint
        assert len(await repo(session).list(db.t1)) == 2


async def test_rotate_secret_bumps_version_and_the_manager_picks_it_up(db: Db) -> None:
    manager = GatewayManager(DbConnectionSource(db.sessions), RING_1)
    async with tenant_session(db.sessions, db.t1) as session:
        record = await repo(session).add(db.t1, "stripe", "eu", STRIPE)
    before = await manager.get(db.t1, record.id)
    body = b'{"id":"evt_1"}'
    signed_new = {"Stripe-Signature": sign("whsec_second", body)}

    async with tenant_session(db.sessions, db.t1) as session:
        rotated = await repo(session).rotate_secret(
            db.t1, record.id, {"webhook_secret": "whsec_second"}
        )
        creds = repo(session).credentials(rotated)
    after = await manager.get(db.t1, record.id)

    assert rotated.version == 2
    assert rotated.updated_at >= record.updated_at
    assert creds["api_key"] == STRIPE["api_key"]  # untouched fields kept
    assert creds["webhook_secret"] == "whsec_second"
    assert after is not before
    after.verify_callback(signed_new, body)
    with pytest.raises(CallbackRejected):
        before.verify_callback(signed_new, body)
    # During the switch-over the provider may still sign with the old secret: accepted.
    assert creds["webhook_secret_previous"] == STRIPE["webhook_secret"]
    after.verify_callback({"Stripe-Signature": sign(STRIPE["webhook_secret"], body)}, body)
    with pytest.raises(CallbackRejected):
        after.verify_callback({"Stripe-Signature": sign("whsec_someone_else", body)}, body)
    with pytest.raises(ConnectionNotFound):
        await manager.get(db.t2, record.id)  # tenant two cannot reach tenant one's connection
    await manager.aclose()


async def test_key_rotation_reencrypts_every_tenant_and_keeps_old_rows_readable(db: Db) -> None:
    records = []
    for tenant, code in ((db.t1, "a"), (db.t1, "b"), (db.t2, "a")):
        async with tenant_session(db.sessions, tenant) as session:
            records.append(await repo(session, RING_1).add(tenant, "jsonpay", code, JSONPAY))
    txn = await _transaction_with_destination(db, RING_1)

    # New key active, old key still in the ring: old rows decrypt before any rotation.
    assert all(open_credentials(RING_12, r)["api_secret"] == "json-api-secret" for r in records)

    report = await rotate_keys(db.sessions, RING_12, batch_size=2)  # several batches

    assert report.ok
    assert report.rotated == 4
    assert await count_by_key(db.sessions) == {"k2": 4}
    async with db.sessions() as owner:
        rows = (await owner.execute(select(Connection))).scalars().all()
        destination = await owner.get(Transaction, txn)
    for row in rows:
        async with tenant_session(db.sessions, row.tenant_id) as session:
            record = await repo(session, RING_2).get(row.tenant_id, row.id)
            assert record.version == 1  # same plaintext: caches need not rebuild
            assert open_credentials(RING_2, record)["api_secret"] == "json-api-secret"
    assert destination is not None
    assert destination.destination_ciphertext is not None
    opened = RING_2.open(
        destination.tenant_id, txn, Sealed("k2", destination.destination_ciphertext)
    )
    assert opened == b'{"iban":"DE89370400440532013000"}'
    assert (await rotate_keys(db.sessions, RING_12)).rotated == 0  # idempotent


async def test_undecryptable_rows_are_reported_and_left_alone(db: Db) -> None:
    async with tenant_session(db.sessions, db.t1) as session:
        good = await repo(session, RING_1).add(db.t1, "jsonpay", "good", JSONPAY)
        bad = await repo(session, RING_1).add(db.t1, "jsonpay", "bad", JSONPAY)
    async with db.sessions() as owner, owner.begin():
        await owner.execute(
            text("UPDATE connections SET credentials_ciphertext = :b WHERE id = :i"),
            {"b": b"\x00" * 40, "i": bad.id},
        )

    report = await rotate_keys(db.sessions, RING_12)

    assert report.rotated == 1
    assert [(t, i) for t, i, _ in report.failed] == [("connections", bad.id)]
    assert "authentication failed" in report.failed[0][2]
    async with tenant_session(db.sessions, db.t1) as session:
        assert (await repo(session, RING_12).get(db.t1, good.id)).key_id == "k2"
        broken = await repo(session, RING_12).get(db.t1, bad.id)
        assert broken.key_id == "k1"
        with pytest.raises(CredentialsUndecryptable, match=str(bad.id)):
            repo(session, RING_12).credentials(broken)
        # A complete set of fields replaces credentials nobody can decrypt any more.
        fixed = await repo(session, RING_12).rotate_secret(db.t1, bad.id, JSONPAY)
        assert repo(session, RING_12).credentials(fixed)["merchant_id"] == "m-1"


async def _transaction_with_destination(db: Db, ring: KeyRing) -> uuid.UUID:
    txn = uuid.uuid4()
    sealed = ring.seal(db.t1, txn, b'{"iban":"DE89370400440532013000"}')
    async with db.sessions() as owner, owner.begin():
        owner.add(Account(tenant_id=db.t1, id="acc-1", country="DE"))
        await owner.flush()
        owner.add(
            Transaction(
                id=txn,
                tenant_id=db.t1,
                account_id="acc-1",
                type="withdrawal",
                status="received",
                amount_minor=100,
                currency="EUR",
                country="DE",
                idempotency_key="k",
                payload_hash="h",
                destination_ciphertext=sealed.ciphertext,
                destination_key_id=sealed.key_id,
                destination_masked="DE89 **** 3000",
            )
        )
    return txn
