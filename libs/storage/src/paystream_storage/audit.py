"""The money audit on PostgreSQL: each check is one set-based function of migration 0011
(`paystream_audit_<check>()`), run here and its rows turned into violations.

- `audit_snapshot`: an owner connection in one REPEATABLE READ, READ ONLY transaction, so
  every check of one audit sees the same committed state (a posting, its balance and its
  outcome event are written in one transaction, so a live system never looks half-done).
- `run_check`: one check's violation count and its first `limit` violations.
- `PgAuditCounts`: the count per check as the app role, through the SECURITY DEFINER
  `paystream_audit_counts` (the reconciler's metrics): no row of any tenant leaves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from paystream_config import DatabaseSettings
from paystream_core.audit import CHECK_NAMES, Check, Horizons, Violation, violation
from paystream_storage.db import APP_ROLE

_HORIZON_CHECKS = frozenset({"stuck_transactions"})
_SCOPE = """
SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM transactions),
  (SELECT count(*) FROM balances), (SELECT count(*) FROM ledger_entries),
  (SELECT count(*) FROM outbox WHERE topic = 'outcomes')
"""
_COUNTS = "SELECT check_name, violations FROM paystream_audit_counts(%s, %s)"


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    violations: int
    details: list[Violation]  # the first `limit`, ordered by tenant, transaction, account

    @property
    def truncated(self) -> bool:
        return len(self.details) < self.violations


@dataclass(frozen=True, slots=True)
class AuditScope:
    """How much the audit looked at."""

    tenants: int
    transactions: int
    balances: int
    ledger_entries: int
    outcome_events: int


@asynccontextmanager
async def audit_snapshot(settings: DatabaseSettings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An owner connection inside one read-only REPEATABLE READ transaction."""
    async with await psycopg.AsyncConnection.connect(settings.libpq_url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            yield conn


async def audit_scope(conn: psycopg.AsyncConnection[Any]) -> AuditScope:
    cursor = await conn.execute(_SCOPE)
    row = await cursor.fetchone()
    assert row is not None
    return AuditScope(*(int(v) for v in row))


async def run_check(
    conn: psycopg.AsyncConnection[Any], check: Check, horizons: Horizons, *, limit: int
) -> CheckResult:
    if check.name not in CHECK_NAMES:  # the name becomes part of the statement
        raise ValueError(f"no audit check {check.name!r}")
    args: tuple[Any, ...] = ()
    if check.name in _HORIZON_CHECKS:
        args = (horizons.horizon_s, horizons.stuck_processing_s)
    placeholders = ", ".join(["%s"] * len(args))
    # The window count is taken over every violation before the limit cuts the details.
    sql = (
        f"SELECT *, count(*) OVER () FROM paystream_audit_{check.name}({placeholders}) v"
        " ORDER BY 1, 2, 3, 4 LIMIT %s"
    )
    cursor = await conn.execute(sql, (*args, max(limit, 1)))
    rows = await cursor.fetchall()
    total = int(rows[0][-1]) if rows else 0
    details = [violation(check.name, row[:-1]) for row in rows[:limit]]
    return CheckResult(check, total, details)


class PgAuditCounts:
    """`paystream_core.audit.AuditCounts` on PostgreSQL, as the app role (one connection per
    call: the audit runs every few minutes and must not hold a connection in between)."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings

    async def counts(self, horizons: Horizons) -> Mapping[str, int]:
        connect = psycopg.AsyncConnection.connect(self._settings.libpq_url)
        async with await connect as conn, conn.transaction():
            await conn.execute("SELECT set_config('role', %s, true)", (APP_ROLE,))
            cursor = await conn.execute(_COUNTS, (horizons.horizon_s, horizons.stuck_processing_s))
            return {name: int(count) for name, count in await cursor.fetchall()}
