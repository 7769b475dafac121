"""Tenants and their API keys. Keys are shown once and stored only as sha256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_storage.models import ApiKey, Tenant

KEY_PREFIX = "psk_"


@dataclass(frozen=True)
class IssuedKey:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    api_key: str  # the only time the cleartext exists outside the client


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_tenant(session: AsyncSession, name: str) -> Tenant:
    """Owner-role session: creating a tenant is an administrative act outside RLS."""
    tenant = Tenant(id=uuid.uuid4(), name=name)
    session.add(tenant)
    await session.flush()
    return tenant


async def tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    return (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none()


async def issue_api_key(session: AsyncSession, tenant_id: uuid.UUID) -> IssuedKey:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        prefix=api_key[:12],
        key_hash=hash_api_key(api_key),
    )
    session.add(key)
    await session.flush()
    return IssuedKey(tenant_id=tenant_id, key_id=key.id, api_key=api_key)


async def revoke_api_keys(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=text("now()"))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def tenant_for_api_key(session: AsyncSession, api_key: str) -> uuid.UUID | None:
    """Works from the app role too: goes through the SECURITY DEFINER lookup function."""
    row = await session.execute(
        text("SELECT paystream_tenant_for_key_hash(:h)"), {"h": hash_api_key(api_key)}
    )
    value = row.scalar_one_or_none()
    return value if isinstance(value, uuid.UUID) else None
