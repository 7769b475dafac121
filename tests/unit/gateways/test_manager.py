"""GatewayManager: lazy build, TTL, eviction on version change, typed errors."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from paystream_core.statuses import TransactionType
from paystream_gateways import (
    CallbackEvent,
    ClientOptions,
    ConnectionDisabled,
    ConnectionNotFound,
    CredentialField,
    Credentials,
    CredentialsUndecryptable,
    Gateway,
    Outcome,
    PaymentRequest,
    ProviderSpec,
    Registry,
    StatusQuery,
    StatusResult,
    Succeeded,
    UnsupportedProvider,
)
from paystream_gateways.connections import ConnectionRecord
from paystream_gateways.manager import GatewayManager
from paystream_keyring import KeyRing

TENANT = uuid.uuid4()
KEYRING = KeyRing({"k1": os.urandom(32)}, "k1")


class FakeGateway:
    def __init__(self, credentials: Credentials) -> None:
        self.token = credentials["token"]
        self.closed = False

    @property
    def provider(self) -> str:
        return "fake"

    async def deposit(self, request: PaymentRequest) -> Outcome:
        return Succeeded(self.token)

    async def withdraw(self, request: PaymentRequest) -> Outcome:
        return Succeeded(self.token)

    async def status(self, query: StatusQuery) -> StatusResult:
        return Succeeded(self.token)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> None:
        return None

    def parse_callback(self, body: bytes) -> CallbackEvent:
        return CallbackEvent(
            "fake", "e", "t", TransactionType.DEPOSIT, "r", None, Succeeded("r"), datetime.now(UTC)
        )

    async def aclose(self) -> None:
        self.closed = True


class Factory:
    def __init__(self) -> None:
        self.built: list[FakeGateway] = []

    def __call__(self, credentials: Credentials, options: ClientOptions) -> Gateway:
        gateway = FakeGateway(credentials)
        self.built.append(gateway)
        return gateway


class Source:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, ConnectionRecord] = {}
        self.loads = 0

    def put(self, token: str, *, provider: str = "fake", version: int = 1) -> ConnectionRecord:
        cid = uuid.uuid4()
        sealed = KEYRING.seal(TENANT, cid, Credentials({"token": token}).to_bytes())
        now = datetime.now(UTC)
        record = ConnectionRecord(
            cid, TENANT, "gw", provider, "main", True, version, now, now, sealed
        )
        self.rows[cid] = record
        return record

    def change(self, record: ConnectionRecord, **changes: object) -> ConnectionRecord:
        updated = dataclasses.replace(record, version=record.version + 1, **changes)  # type: ignore[arg-type]
        self.rows[record.id] = updated
        return updated

    async def load(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord | None:
        self.loads += 1
        row = self.rows.get(connection_id)
        return row if row is not None and row.tenant_id == tenant_id else None

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None:
        return next(
            (r for r in self.rows.values() if (r.gateway_code, r.code) == (gateway_code, code)),
            None,
        )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[Source, Factory, Clock, GatewayManager]:
    source, factory, clock = Source(), Factory(), Clock()
    registry = Registry([ProviderSpec("fake", factory, (CredentialField("token", secret=True),))])
    manager = GatewayManager(source, KEYRING, registry, ttl_s=60, close_grace_s=5, clock=clock)
    return source, factory, clock, manager


async def test_built_lazily_once_and_cached(
    parts: tuple[Source, Factory, Clock, GatewayManager],
) -> None:
    source, factory, _, manager = parts
    record = source.put("t1")
    assert factory.built == []  # nothing until first use

    first = await manager.get(TENANT, record.id)
    second = await manager.get(TENANT, record.id)

    assert first is second
    assert len(factory.built) == 1
    assert (await first.deposit(_request())) == Succeeded("t1")


async def test_version_change_rebuilds_and_closes_the_old_client_after_grace(
    parts: tuple[Source, Factory, Clock, GatewayManager],
) -> None:
    source, factory, clock, manager = parts
    record = source.put("t1")
    old = await manager.get(TENANT, record.id)
    sealed = KEYRING.seal(TENANT, record.id, Credentials({"token": "t2"}).to_bytes())
    source.change(record, sealed=sealed)

    new = await manager.get(TENANT, record.id)

    assert new is not old
    assert (await new.deposit(_request())) == Succeeded("t2")
    assert manager.cached_version(record.id) == 2
    assert not factory.built[0].closed  # in-flight calls on it may still finish
    clock.now += 6
    await manager.get(TENANT, record.id)
    assert factory.built[0].closed


async def test_ttl_expiry_rebuilds(parts: tuple[Source, Factory, Clock, GatewayManager]) -> None:
    source, factory, clock, manager = parts
    record = source.put("t1")
    await manager.get(TENANT, record.id)
    clock.now += 61
    await manager.get(TENANT, record.id)
    assert len(factory.built) == 2


async def test_concurrent_first_use_builds_once(
    parts: tuple[Source, Factory, Clock, GatewayManager],
) -> None:
    source, factory, _, manager = parts
    record = source.put("t1")
    results = await asyncio.gather(*(manager.get(TENANT, record.id) for _ in range(10)))
    assert len({id(r) for r in results}) == 1
    assert len(factory.built) == 1


async def test_typed_errors(parts: tuple[Source, Factory, Clock, GatewayManager]) -> None:
    source, _, _, manager = parts
    with pytest.raises(ConnectionNotFound):
        await manager.get(TENANT, uuid.uuid4())
    with pytest.raises(ConnectionNotFound):
        await manager.get(uuid.uuid4(), source.put("t").id)  # another tenant's id
    with pytest.raises(UnsupportedProvider, match="'paypal'"):
        await manager.get(TENANT, source.put("t", provider="paypal").id)
    disabled = source.change(source.put("t"), enabled=False)
    with pytest.raises(ConnectionDisabled):
        await manager.get(TENANT, disabled.id)
    moved = source.put("t")
    other = source.put("t")
    source.rows[other.id] = dataclasses.replace(other, sealed=moved.sealed)  # copied row
    with pytest.raises(CredentialsUndecryptable, match="authentication failed"):
        await manager.get(TENANT, other.id)


async def test_disabling_evicts_and_aclose_closes_everything(
    parts: tuple[Source, Factory, Clock, GatewayManager],
) -> None:
    source, factory, _, manager = parts
    record = source.put("t1")
    await manager.get(TENANT, record.id)
    source.change(record, enabled=False)
    with pytest.raises(ConnectionDisabled):
        await manager.get(TENANT, record.id)
    assert manager.cached_version(record.id) is None

    await manager.aclose()
    assert all(g.closed for g in factory.built)


async def test_get_by_code(parts: tuple[Source, Factory, Clock, GatewayManager]) -> None:
    source, _, _, manager = parts
    source.put("t1")
    gateway = await manager.get_by_code(TENANT, "gw", "main")
    assert (await gateway.status(StatusQuery(TransactionType.DEPOSIT, "k"))) == Succeeded("t1")
    with pytest.raises(ConnectionNotFound):
        await manager.get_by_code(TENANT, "gw", "other")


def _request() -> PaymentRequest:
    return PaymentRequest.for_attempt(
        uuid.uuid4(), 1, account_id="a", amount_minor=1, currency="EUR", country="DE"
    )


async def test_an_older_row_never_rolls_the_client_back(
    parts: tuple[Source, Factory, Clock, GatewayManager],
) -> None:
    source, factory, _, manager = parts
    old_row = source.put("t1")
    sealed = KEYRING.seal(TENANT, old_row.id, Credentials({"token": "t2"}).to_bytes())
    new_row = source.change(old_row, sealed=sealed)
    current = await manager.for_record(new_row)

    assert await manager.for_record(old_row) is current  # read before the rotation
    assert len(factory.built) == 1
