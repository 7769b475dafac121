"""`paystream transactions unresolved`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from paystream_cli.common import database, fail, run_owner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


@click.group("transactions")
def transactions() -> None:
    """Transactions that need an operator."""


@transactions.command("unresolved")
@click.option(
    "--older-than",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Age since creation (default: PAYSTREAM_RECONCILER_HORIZON_S, 86400).",
)
@click.option(
    "--stuck-after",
    type=float,
    default=None,
    metavar="SECONDS",
    help="received/processing unchanged this long"
    " (default: PAYSTREAM_RECONCILER_STUCK_PROCESSING_S, 900).",
)
@click.option("--limit", default=200, show_default=True)
def transactions_unresolved(
    older_than: float | None, stuck_after: float | None, limit: int
) -> None:
    """pending/unknown transactions past the horizon (the reconciler will not fail them:
    money may have moved) and received/processing ones nothing moves any more (their
    command was dead-lettered). Check them at the provider. Exit code 1 when there are any."""
    from sqlalchemy import text

    db = database()
    horizon = older_than if older_than is not None else _seconds("reconciler_horizon_s")
    stuck = stuck_after if stuck_after is not None else _seconds("reconciler_stuck_processing_s")

    async def action(session: AsyncSession) -> list[tuple[object, ...]]:
        rows = await session.execute(
            text(
                "SELECT tn.name, t.id, t.type, t.status, t.amount_minor, t.currency,"
                " t.gateway_code, t.created_at, r.lookups, r.last_result"
                " FROM transactions t JOIN tenants tn ON tn.id = t.tenant_id"
                " LEFT JOIN reconciliations r ON r.transaction_id = t.id"
                " WHERE (t.status IN ('pending', 'unknown')"
                "        AND t.created_at <= now() - make_interval(secs => :h))"
                "    OR (t.status IN ('received', 'processing')"
                "        AND t.updated_at <= now() - make_interval(secs => :s))"
                " ORDER BY t.created_at LIMIT :n"
            ),
            {"h": horizon, "s": stuck, "n": limit},
        )
        return [tuple(row) for row in rows]

    rows = run_owner(db, action)
    if not rows:
        click.echo(
            f"no pending/unknown transaction older than {horizon:g}s and none stuck in"
            f" processing for {stuck:g}s"
        )
        return
    now = datetime.now(UTC)
    click.echo(
        f"{'tenant':<16} {'transaction':<36} {'type':<10} {'status':<10} {'amount':>14} "
        f"{'gateway':<10} {'age':>8} {'lookups':>7}  last result"
    )
    for tenant, txn, kind, status, amount, currency, gateway, created, lookups, last in rows:
        assert isinstance(created, datetime)
        age = f"{(now - created).total_seconds() / 3600:.1f}h"
        click.echo(
            f"{str(tenant)[:16]:<16} {txn!s:<36} {kind!s:<10} {status!s:<10} "
            f"{f'{amount} {currency}':>14} {gateway or '-'!s:<10} {age:>8} "
            f"{lookups or 0:>7}  {last or '-'}"
        )
    click.echo(f"{len(rows)} unresolved transaction(s)", err=True)
    sys.exit(1)


def _seconds(field: str) -> float:
    """The reconciler's PAYSTREAM_<FIELD>, read alone: the other settings are not needed here."""
    import os

    from paystream_provider_reports.settings import ReconcilerSettings

    name = f"PAYSTREAM_{field.upper()}"
    raw = os.environ.get(name)
    if raw is None:
        return float(ReconcilerSettings.model_fields[field].default)
    try:
        return float(raw)
    except ValueError:
        fail(f"{name}: not a number: {raw!r}")
