"""Engines and the tenant-scoped unit of work.

Every application transaction runs as the non-owner app role with the tenant set LOCAL to
that transaction, so row-level security holds even on a pooled connection.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from paystream_config import DatabaseSettings

APP_ROLE = "paystream_app"

_SCOPE = text("SELECT set_config('role', :role, true), set_config('paystream.tenant_id', :t, true)")


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_s,
        pool_pre_ping=True,
    )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def tenant_session(
    factory: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None
) -> AsyncIterator[AsyncSession]:
    """One DB transaction as the app role, seeing only `tenant_id`'s rows (None: no rows).

    Commits when the block exits normally, rolls back on an exception.
    """
    async with factory() as session, session.begin():
        await session.execute(_SCOPE, {"role": APP_ROLE, "t": str(tenant_id or "")})
        yield session
