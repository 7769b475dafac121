"""Per-tenant provider connections (seed 000) over the `connections` table.

A tenant may hold several connections per gateway, told apart by `code`. Credentials are
one JSON object sealed with the key ring (`paystream_keyring`), bound to tenant and
connection id. `version` increases on every change a cached client must notice (secret
rotation, enable/disable); re-encryption under a new key (`paystream_keyring.rotate_keys`)
leaves it alone, the plaintext being equal.

Every query filters by tenant explicitly, so the repository is safe both in an RLS tenant
session (app role) and in an owner session (CLI administration).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import (
    ConnectionExists,
    ConnectionNotFound,
    CredentialsUndecryptable,
    GatewayNotFound,
)
from paystream_gateways.registry import Registry
from paystream_gateways.specs import ProviderSpec
from paystream_keyring import DecryptionError, KeyRing, Sealed
from paystream_storage.models import Connection, Gateway


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A connection row plus its gateway's provider. Safe to print: the sealed credentials
    are excluded from repr, and they are ciphertext anyway."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    gateway_code: str
    provider: str
    code: str
    enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime
    sealed: Sealed = field(repr=False, compare=False)

    @property
    def key_id(self) -> str:
        return self.sealed.key_id


def _query() -> Select[Connection, str]:
    return select(Connection, Gateway.provider).join(
        Gateway, Gateway.code == Connection.gateway_code
    )


def _record(row: Connection, provider: str) -> ConnectionRecord:
    return ConnectionRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        gateway_code=row.gateway_code,
        provider=provider,
        code=row.code,
        enabled=row.enabled,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        sealed=Sealed(row.credentials_key_id, bytes(row.credentials_ciphertext)),
    )


async def fetch(
    session: AsyncSession, tenant_id: uuid.UUID, connection_id: uuid.UUID
) -> ConnectionRecord | None:
    stmt = _query().where(Connection.tenant_id == tenant_id, Connection.id == connection_id)
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else _record(row[0], row[1])


async def fetch_by_code(
    session: AsyncSession, tenant_id: uuid.UUID, gateway_code: str, code: str
) -> ConnectionRecord | None:
    stmt = _query().where(
        Connection.tenant_id == tenant_id,
        Connection.gateway_code == gateway_code,
        Connection.code == code,
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else _record(row[0], row[1])


async def fetch_all(
    session: AsyncSession, tenant_id: uuid.UUID | None, *, gateway_code: str | None = None
) -> list[ConnectionRecord]:
    """`tenant_id=None` lists every tenant's connections (owner sessions only)."""
    stmt = _query().order_by(Connection.tenant_id, Connection.gateway_code, Connection.code)
    if tenant_id is not None:
        stmt = stmt.where(Connection.tenant_id == tenant_id)
    if gateway_code is not None:
        stmt = stmt.where(Connection.gateway_code == gateway_code)
    return [_record(row[0], row[1]) for row in (await session.execute(stmt)).all()]


def open_credentials(keyring: KeyRing, record: ConnectionRecord) -> Credentials:
    try:
        plaintext = keyring.open(record.tenant_id, record.id, record.sealed)
        return Credentials.from_bytes(plaintext)
    except DecryptionError as exc:
        raise CredentialsUndecryptable(record.id, str(exc)) from None


class ConnectionRepository:
    """Create and change connections inside the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: KeyRing, registry: Registry) -> None:
        self._session = session
        self._keyring = keyring
        self._registry = registry

    async def add(
        self,
        tenant_id: uuid.UUID,
        gateway_code: str,
        code: str,
        credentials: Mapping[str, str],
        *,
        connection_id: uuid.UUID | None = None,
    ) -> ConnectionRecord:
        gateway = await self._session.get(Gateway, gateway_code)
        if gateway is None:
            raise GatewayNotFound(gateway_code)
        creds = self._registry.get(gateway.provider).validate(credentials)
        cid = connection_id or uuid.uuid4()
        sealed = self._keyring.seal(tenant_id, cid, creds.to_bytes())
        row = Connection(
            id=cid,
            tenant_id=tenant_id,
            gateway_code=gateway_code,
            code=code,
            credentials_ciphertext=sealed.ciphertext,
            credentials_key_id=sealed.key_id,
        )
        try:
            # A savepoint, so a duplicate leaves the caller's transaction usable.
            async with self._session.begin_nested():
                self._session.add(row)
                await self._session.flush()
        except IntegrityError:
            raise ConnectionExists(gateway_code, code) from None
        await self._session.refresh(row)
        return _record(row, gateway.provider)

    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord:
        record = await fetch(self._session, tenant_id, connection_id)
        if record is None:
            raise ConnectionNotFound(connection_id)
        return record

    async def get_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord:
        record = await fetch_by_code(self._session, tenant_id, gateway_code, code)
        if record is None:
            raise ConnectionNotFound(f"{gateway_code}/{code}")
        return record

    async def list(
        self, tenant_id: uuid.UUID | None, *, gateway_code: str | None = None
    ) -> list[ConnectionRecord]:
        return await fetch_all(self._session, tenant_id, gateway_code=gateway_code)

    def credentials(self, record: ConnectionRecord) -> Credentials:
        return open_credentials(self._keyring, record)

    async def rotate_secret(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, changes: Mapping[str, str]
    ) -> ConnectionRecord:
        """Replace some credential fields, re-encrypt under the active key, bump version.

        When the old credentials cannot be decrypted (their key is gone), a complete set of
        fields still replaces them: that is the way back from a lost key.
        """
        await self._lock(tenant_id, connection_id)
        record = await self.get(tenant_id, connection_id)
        spec = self._registry.get(record.provider)
        spec.validate(changes, partial=True)
        try:
            current = self.credentials(record)
        except CredentialsUndecryptable:
            merged = Credentials(changes)
        else:
            changes = _keep_previous_webhook_secret(spec, current, changes)
            merged = current.merged(changes)
        creds = spec.validate(merged)
        sealed = self._keyring.seal(tenant_id, connection_id, creds.to_bytes())
        return await self._update(
            tenant_id,
            connection_id,
            credentials_ciphertext=sealed.ciphertext,
            credentials_key_id=sealed.key_id,
        )

    async def set_enabled(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, enabled: bool
    ) -> ConnectionRecord:
        await self._lock(tenant_id, connection_id)
        return await self._update(tenant_id, connection_id, enabled=enabled)

    async def _lock(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> None:
        stmt = (
            select(Connection.id)
            .where(Connection.tenant_id == tenant_id, Connection.id == connection_id)
            .with_for_update()
        )
        if (await self._session.execute(stmt)).scalar_one_or_none() is None:
            raise ConnectionNotFound(connection_id)

    async def _update(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID, **values: object
    ) -> ConnectionRecord:
        await self._session.execute(
            update(Connection)
            .where(Connection.tenant_id == tenant_id, Connection.id == connection_id)
            .values(**values, version=Connection.version + 1, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
        self._session.expire_all()
        return await self.get(tenant_id, connection_id)


def _keep_previous_webhook_secret(
    spec: ProviderSpec, current: Credentials, changes: Mapping[str, str]
) -> Mapping[str, str]:
    """A new webhook secret keeps the old one verifying until the provider signs with the
    new one (the next rotation drops it), so no callback is refused in between."""
    fields = {f.name for f in spec.fields}
    if (
        "webhook_secret" in changes
        and "webhook_secret_previous" in fields
        and "webhook_secret_previous" not in changes
        and changes["webhook_secret"] != current.get("webhook_secret")
    ):
        return {**changes, "webhook_secret_previous": current["webhook_secret"]}
    return changes
