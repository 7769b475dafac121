"""What waits and for how long, across tenants, as the app role (the reconciler's backlog
gauges): aggregates from the SECURITY DEFINER functions of migration 0012, no row of any
tenant."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from paystream_config import DatabaseSettings
from paystream_storage.db import APP_ROLE

_WAITING = (
    "SELECT gateway, status, transactions, oldest_age_s FROM paystream_waiting_transactions()"
)
_OUTBOX = "SELECT unpublished, oldest_age_s FROM paystream_outbox_backlog()"


@dataclass(frozen=True, slots=True)
class Waiting:
    """`pending` or `unknown` transactions of one gateway."""

    gateway: str
    status: str
    transactions: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class Backlog:
    waiting: list[Waiting]
    outbox_unpublished: int
    outbox_oldest_age_s: float  # 0 when nothing waits


class PgBacklog:
    """One connection per call: read every reconciler interval, never held in between (a
    database restart costs one failed read, not a broken connection kept)."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings

    async def read(self) -> Backlog:
        connect = psycopg.AsyncConnection.connect(self._settings.libpq_url)
        async with await connect as conn, conn.transaction():
            await conn.execute("SELECT set_config('role', %s, true)", (APP_ROLE,))
            cursor = await conn.execute(_WAITING)
            rows = await cursor.fetchall()
            waiting = [Waiting(g, s, int(n), float(age)) for g, s, n, age in rows]
            cursor = await conn.execute(_OUTBOX)
            row = await cursor.fetchone()
            assert row is not None  # an aggregate without GROUP BY returns one row
            return Backlog(waiting, int(row[0]), float(row[1]))
