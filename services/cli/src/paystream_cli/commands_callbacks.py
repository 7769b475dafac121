"""`paystream serve callback-ingress`, `paystream worker callback|reconciler` and
`paystream transactions unresolved`.

Register in main.py: `serve.add_command(serve_callback_ingress)`,
`worker.add_command(worker_callback)`, `worker.add_command(worker_reconciler)`,
`cli.add_command(transactions)`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import click
from pydantic_settings import BaseSettings

from paystream_cli import logs
from paystream_config import DatabaseSettings, SettingsError, load

_S = TypeVar("_S", bound=BaseSettings)


def _fail(message: str) -> NoReturn:
    click.echo(f"paystream: {message}", err=True)
    sys.exit(2)


def _settings(cls: type[_S]) -> _S:
    try:
        return load(cls)
    except SettingsError as exc:
        _fail(str(exc))


@click.command("callback-ingress")
def serve_callback_ingress() -> None:
    """Provider callbacks over HTTP, verified and published to Kafka (PAYSTREAM_CALLBACK_*)."""
    from paystream_callback_ingress.main import run

    logs.setup("callback-ingress")
    try:
        run()
    except SettingsError as exc:
        _fail(str(exc))


@click.command("callback")
def worker_callback() -> None:
    """Apply provider callbacks to transactions (faust; PAYSTREAM_CALLBACK_WORKER_*)."""
    from paystream_provider_reports.main import run_callback_worker

    logs.setup("callback-worker")
    try:
        run_callback_worker()
    except SettingsError as exc:
        _fail(str(exc))


@click.command("reconciler")
def worker_reconciler() -> None:
    """Resolve pending/unknown transactions by provider lookups; expire stale actions
    (PAYSTREAM_RECONCILER_*)."""
    from paystream_provider_reports.main import run_reconciler

    logs.setup("reconciler")
    try:
        run_reconciler()
    except SettingsError as exc:
        _fail(str(exc))


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
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_cli.admin import run_owner
    from paystream_provider_reports.settings import ReconcilerSettings

    db = _settings(DatabaseSettings)
    horizon = older_than if older_than is not None else _horizon(ReconcilerSettings)
    stuck = stuck_after if stuck_after is not None else _stuck(ReconcilerSettings)

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


def _horizon(cls: type[BaseSettings]) -> float:
    return _seconds(cls, "reconciler_horizon_s")


def _stuck(cls: type[BaseSettings]) -> float:
    return _seconds(cls, "reconciler_stuck_processing_s")


def _seconds(cls: type[BaseSettings], field: str) -> float:
    # Only this one value is needed here: read it without requiring the other settings.
    import os

    name = f"PAYSTREAM_{field.upper()}"
    raw = os.environ.get(name)
    if raw is None:
        return float(cls.model_fields[field].default)
    try:
        return float(raw)
    except ValueError:
        _fail(f"{name}: not a number: {raw!r}")
