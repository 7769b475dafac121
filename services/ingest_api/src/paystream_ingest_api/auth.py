"""Bearer API keys -> tenant ids, with a short cache so each request is not a DB trip."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_ingest_api.problems import Problem
from paystream_storage.db import tenant_session
from paystream_storage.tenants import hash_api_key, tenant_for_api_key


class ApiKeyCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[str, tuple[uuid.UUID, float]] = {}
        self._max = max_entries

    def get(self, key_hash: str, ttl: float) -> uuid.UUID | None:
        hit = self._entries.get(key_hash)
        if hit is None or time.monotonic() - hit[1] > ttl:
            return None
        return hit[0]

    def put(self, key_hash: str, tenant: uuid.UUID) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude but bounded; a miss costs one query
        self._entries[key_hash] = (tenant, time.monotonic())


async def authenticate(
    authorization: str | None,
    sessions: async_sessionmaker[AsyncSession],
    cache: ApiKeyCache,
    ttl: float,
) -> uuid.UUID:
    """The tenant of a valid `Bearer` key; Problem(401) otherwise. Only hashes are cached."""
    scheme, _, api_key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not api_key.strip():
        raise Problem(
            "unauthorized",
            "send Authorization: Bearer <API key>",
            headers={"WWW-Authenticate": 'Bearer realm="paystream"'},
        )
    key_hash = hash_api_key(api_key.strip())
    tenant = cache.get(key_hash, ttl) if ttl > 0 else None
    if tenant is None:
        async with tenant_session(sessions, None) as session:
            tenant = await tenant_for_api_key(session, api_key.strip())
        if tenant is None:
            raise Problem(
                "unauthorized",
                "the API key is unknown or revoked",
                headers={"WWW-Authenticate": 'Bearer realm="paystream", error="invalid_token"'},
            )
        cache.put(key_hash, tenant)
    return tenant
