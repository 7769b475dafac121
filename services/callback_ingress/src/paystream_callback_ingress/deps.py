"""What the callback ingress needs, built once per process (or by a test) and passed in."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from paystream_callback_ingress.metrics import IngressMetrics
from paystream_callback_ingress.settings import CallbackIngressSettings
from paystream_gateways.manager import ConnectionSource, GatewayManager
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.callback_log import CallbackLogWriter
from paystream_storage.config_cache import ConfigCache
from paystream_storage.db import tenant_session
from paystream_storage.pool import HotPool


class ConnectionTenants:
    """connection id -> tenant id, through the SECURITY DEFINER lookup (no tenant is set
    yet). A connection never changes tenant, so hits are cached; misses only briefly, so a
    connection created a moment ago is found soon."""

    def __init__(self, *, miss_ttl_s: float = 5.0, max_entries: int = 100_000) -> None:
        self._hits: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
        self._misses: dict[tuple[uuid.UUID, str], float] = {}
        self._miss_ttl = miss_ttl_s
        self._max = max_entries

    async def tenant_of(
        self, sessions: async_sessionmaker[AsyncSession], connection: uuid.UUID, gateway: str
    ) -> uuid.UUID | None:
        key = (connection, gateway)
        if key in self._hits:
            return self._hits[key]
        missed = self._misses.get(key)
        if missed is not None and time.monotonic() - missed < self._miss_ttl:
            return None
        async with tenant_session(sessions, None) as session:
            row = await session.execute(
                text("SELECT paystream_connection_tenant(:c, :g)"), {"c": connection, "g": gateway}
            )
            tenant = row.scalar_one_or_none()
        if len(self._hits) >= self._max or len(self._misses) >= self._max:
            self._hits.clear()
            self._misses.clear()
        if isinstance(tenant, uuid.UUID):
            self._hits[key] = tenant
            self._misses.pop(key, None)
            return tenant
        self._misses[key] = time.monotonic()
        return None


@dataclass
class IngressDeps:
    settings: CallbackIngressSettings
    publisher: AsyncPublisher
    sessions: async_sessionmaker[AsyncSession]
    registry: SchemaRegistry
    gateways: GatewayManager
    connections: ConnectionSource
    callback_log: CallbackLogWriter
    pool: HotPool
    config: ConfigCache
    metrics: IngressMetrics = field(default_factory=IngressMetrics)
    tenants: ConnectionTenants = field(default_factory=ConnectionTenants)

    @property
    def engine(self) -> AsyncEngine:
        engine = self.sessions.kw["bind"]
        assert isinstance(engine, AsyncEngine)
        return engine
