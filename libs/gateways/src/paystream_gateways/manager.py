"""GatewayManager: one lazily built gateway client per connection (seed 000).

A client is built on first use (decrypting the credentials then, not at start-up), cached
for `ttl_s`, and rebuilt as soon as the connection's `version` is newer than the one it was
built from, so a rotated secret or a disabled connection takes effect on the next call in
every process. The version check is a primary-key read; callers that already loaded the
row (routing does) pass it to `for_record` and skip even that.

Replaced clients are closed after a grace period rather than at once: another coroutine
may still be in the middle of a call on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_gateways.connections import (
    ConnectionRecord,
    fetch,
    fetch_by_code,
    open_credentials,
)
from paystream_gateways.errors import ConnectionDisabled, ConnectionNotFound
from paystream_gateways.protocol import ClientOptions, Gateway
from paystream_gateways.registry import Registry, default_registry
from paystream_keyring import KeyRing
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import tenant_session

log = logging.getLogger(__name__)


class ConnectionSource(Protocol):
    async def load(
        self, tenant_id: uuid.UUID, connection_id: uuid.UUID
    ) -> ConnectionRecord | None: ...

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None: ...


class DbConnectionSource:
    """Reads connections as the app role inside the tenant's RLS scope."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def load(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord | None:
        async with tenant_session(self._sessions, tenant_id) as session:
            return await fetch(session, tenant_id, connection_id)

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None:
        async with tenant_session(self._sessions, tenant_id) as session:
            return await fetch_by_code(session, tenant_id, gateway_code, code)


class CachedConnectionSource:
    """Connection rows from the process's configuration cache: read once, kept until the
    configuration version moves (any change to a connection bumps it), so a provider call
    costs no database round trip to find its credentials. A missing connection is not
    remembered: one created a moment ago is found at once."""

    def __init__(self, inner: ConnectionSource, config: ConfigCache) -> None:
        self._inner = inner
        self._config = config

    async def load(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord | None:
        key = ("connection", tenant_id, connection_id)
        cached: ConnectionRecord | None = self._config.get(key)
        if cached is not None:
            return cached
        version = self._config.version
        record = await self._inner.load(tenant_id, connection_id)
        return self._config.put(key, record, read_at=version) if record is not None else None

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None:
        return await self._inner.load_by_code(tenant_id, gateway_code, code)


@dataclass
class _Entry:
    gateway: Gateway
    version: int
    expires_at: float


class GatewayManager:
    def __init__(
        self,
        source: ConnectionSource,
        keyring: KeyRing,
        registry: Registry | None = None,
        *,
        options: ClientOptions | None = None,
        ttl_s: float = 900.0,
        close_grace_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._keyring = keyring
        self._registry = registry or default_registry()
        self._options = options or ClientOptions()
        self._ttl = ttl_s
        self._grace = close_grace_s
        self._clock = clock
        self._cache: dict[uuid.UUID, _Entry] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._retired: list[tuple[float, Gateway]] = []

    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> Gateway:
        record = await self._source.load(tenant_id, connection_id)
        if record is None:
            self._evict(connection_id)
            raise ConnectionNotFound(connection_id)
        return await self.for_record(record)

    async def get_by_code(self, tenant_id: uuid.UUID, gateway_code: str, code: str) -> Gateway:
        record = await self._source.load_by_code(tenant_id, gateway_code, code)
        if record is None:
            raise ConnectionNotFound(f"{gateway_code}/{code}")
        return await self.for_record(record)

    async def for_record(self, record: ConnectionRecord) -> Gateway:
        """The gateway for a connection row the caller has just read."""
        await self._reap()
        if not record.enabled:
            self._evict(record.id)
            raise ConnectionDisabled(record.id)
        cached = self._fresh(record)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(record.id, asyncio.Lock())
        async with lock:  # one build per connection, however many callers race
            cached = self._fresh(record)
            if cached is not None:
                return cached
            spec = self._registry.get(record.provider)
            credentials = spec.validate(open_credentials(self._keyring, record))
            gateway = spec.factory(credentials, self._options)
            self._evict(record.id)
            self._cache[record.id] = _Entry(gateway, record.version, self._clock() + self._ttl)
            log.info(
                "built %s gateway for connection %s (version %d)",
                record.provider,
                record.id,
                record.version,
            )
            return gateway

    def _fresh(self, record: ConnectionRecord) -> Gateway | None:
        entry = self._cache.get(record.id)
        if entry is None:
            return None
        # A caller holding an older row than the cache (it read before a rotation) gets the
        # newer client: versions only move forward, and flapping would rebuild every call.
        if entry.version < record.version or self._clock() >= entry.expires_at:
            self._evict(record.id)
            return None
        return entry.gateway

    def invalidate(self, connection_id: uuid.UUID) -> None:
        """Drop a cached client now (e.g. on a change notification)."""
        self._evict(connection_id)

    def cached_version(self, connection_id: uuid.UUID) -> int | None:
        entry = self._cache.get(connection_id)
        return None if entry is None else entry.version

    def _evict(self, connection_id: uuid.UUID) -> None:
        entry = self._cache.pop(connection_id, None)
        if entry is not None:
            self._retired.append((self._clock(), entry.gateway))

    async def _reap(self) -> None:
        now = self._clock()
        due = [g for at, g in self._retired if now - at >= self._grace]
        if not due:
            return
        self._retired = [(at, g) for at, g in self._retired if now - at < self._grace]
        for gateway in due:
            await _close_quietly(gateway)

    async def aclose(self) -> None:
        for entry in self._cache.values():
            await _close_quietly(entry.gateway)
        for _, gateway in self._retired:
            await _close_quietly(gateway)
        self._cache.clear()
        self._retired.clear()


async def _close_quietly(gateway: Gateway) -> None:
    try:
        await gateway.aclose()
    except Exception:  # closing is best effort; never let it fail a payment call
        log.warning("closing a retired %s gateway failed", gateway.provider, exc_info=True)
