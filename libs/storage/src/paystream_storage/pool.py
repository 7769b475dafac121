"""Plain psycopg connections for the hot path: the payment units, the ingest API's one
statement, the callback log.

SQLAlchemy's pool serves the ORM paths (snapshots, connections, the CLI); it pings a
connection on every checkout, which on the hot path was one more round trip per unit of
work. psycopg's own pool hands out connections without a check and drops one that broke
(a database restart shows as one transient error per pooled connection, which the callers
retry). Opened on first use, inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from paystream_config import DatabaseSettings

RECONNECT_TIMEOUT_S = 10.0


class HotPool:
    def __init__(self, settings: DatabaseSettings, *, max_size: int | None = None) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            settings.libpq_url,
            min_size=1,
            max_size=max_size or settings.database_pool_size,
            open=False,
            name="paystream-hot-path",
            timeout=settings.database_pool_timeout_s,
            # psycopg_pool doubles its reconnection delay without a cap until this timeout
            # (5 min by default): after a 60 s outage the next attempt could be a minute
            # away, every request meanwhile a 503 (seen in tests/e2e/test_database_outage).
            # Giving up after RECONNECT_TIMEOUT_S lets the next request start a fresh
            # attempt, so a connection is at most a few seconds away once PostgreSQL is back.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            # A lone statement commits by itself (the ingest API's reservation: one round
            # trip); units open their transactions explicitly.
            kwargs={"autocommit": True},
        )
        self._opened = False
        self._lock: asyncio.Lock | None = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for one transaction; committed if the block ends normally (the
        caller usually opens `conn.transaction()` itself), rolled back otherwise."""
        if not self._opened:
            await self._open()
        async with self._pool.connection() as conn:
            yield conn

    async def _open(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False
