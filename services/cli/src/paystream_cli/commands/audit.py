"""`paystream audit`: are every tenant's books right?"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from paystream_cli.commands.transactions import _seconds
from paystream_cli.common import database, fail

if TYPE_CHECKING:
    from paystream_config import DatabaseSettings
    from paystream_core.audit import Horizons
    from paystream_storage.audit import AuditScope, CheckResult


@click.command("audit")
@click.option("-v", "--verbose", is_flag=True, help="List each violation.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="Violations listed per check (all are counted).",
)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="pending/unknown/action_required this long after creation is stuck"
    " (default: PAYSTREAM_RECONCILER_HORIZON_S, 86400).",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="received/processing unchanged this long is stuck"
    " (default: PAYSTREAM_RECONCILER_STUCK_PROCESSING_S, 900).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Report each check on stderr as it runs (default: when stderr is a terminal).",
)
def audit(
    verbose: bool,
    as_json: bool,
    limit: int,
    older_than: float | None,
    stuck_after: float | None,
    progress: bool | None,
) -> None:
    """Check every tenant's books, per currency: each transaction's ledger entries sum to
    zero, balances equal the sum of their entries and none is below zero, each
    transaction's entries match its status, each terminal transaction has exactly one
    terminal outcome event, each status matches its last outcome event, and nothing is
    stuck past the reconciler's horizons.

    Runs as the database owner (PAYSTREAM_DATABASE_URL), on one consistent snapshot.
    Exit code 0: no violation; 1: violations; 2: could not run (usage, database)."""
    from paystream_core.audit import Horizons

    horizons = Horizons(
        horizon_s=older_than if older_than is not None else _seconds("reconciler_horizon_s"),
        stuck_processing_s=(
            stuck_after if stuck_after is not None else _seconds("reconciler_stuck_processing_s")
        ),
    )
    show_progress = sys.stderr.isatty() if progress is None else progress
    scope, results = _run(database(), horizons, limit, show_progress)
    failed = sum(r.violations for r in results)
    if as_json:
        click.echo(json.dumps(_document(scope, horizons, results), indent=2))
    else:
        _print(scope, results, verbose=verbose)
    if failed:
        sys.exit(1)


def _run(
    db: DatabaseSettings, horizons: Horizons, limit: int, progress: bool
) -> tuple[AuditScope, list[CheckResult]]:
    import asyncio

    import psycopg

    from paystream_core.audit import CHECKS
    from paystream_storage.audit import audit_scope, audit_snapshot, run_check

    def say(text: str, *, nl: bool = True) -> None:
        if progress:
            click.echo(text, err=True, nl=nl)

    async def go() -> tuple[AuditScope, list[CheckResult]]:
        async with audit_snapshot(db) as conn:
            say("counting what to audit ... ", nl=False)
            scope = await audit_scope(conn)
            say(f"{scope.transactions} transactions, {scope.ledger_entries} ledger entries")
            results = []
            for n, check in enumerate(CHECKS, 1):
                say(f"[{n}/{len(CHECKS)}] {check.title} ... ", nl=False)
                started = time.monotonic()
                result = await run_check(conn, check, horizons, limit=limit)
                say(f"{result.violations} violation(s) ({time.monotonic() - started:.2f}s)")
                results.append(result)
            return scope, results

    try:
        return asyncio.run(go())
    except psycopg.errors.UndefinedFunction:
        fail("the database has no audit functions (migration 0011): run `paystream migrate`")
    except psycopg.OperationalError as exc:
        fail(f"database: {str(exc).strip()}")


def _print(scope: AuditScope, results: list[CheckResult], *, verbose: bool) -> None:
    click.echo(
        f"audited {scope.tenants} tenant(s): {scope.transactions} transactions,"
        f" {scope.balances} balances, {scope.ledger_entries} ledger entries,"
        f" {scope.outcome_events} outcome events"
    )
    click.echo(f"{'check':<24} {'scope':<22} {'violations':>10}  what")
    for r in results:
        click.echo(f"{r.check.name:<24} {r.check.scope:<22} {r.violations:>10}  {r.check.title}")
    failed = [r for r in results if r.violations]
    if verbose:
        for r in failed:
            click.echo(f"\n{r.check.name}: {r.violations} violation(s)")
            for v in r.details:
                click.echo(f"  {v.message}")
            if r.truncated:
                click.echo(f"  ... and {r.violations - len(r.details)} more (raise --limit)")
    total = sum(r.violations for r in failed)
    if not failed:
        click.echo("OK: no violations")
    else:
        hint = "" if verbose else " (details: paystream audit --verbose)"
        click.echo(f"FAILED: {total} violation(s) in {len(failed)} check(s){hint}")


def _document(scope: AuditScope, horizons: Horizons, results: list[CheckResult]) -> dict[str, Any]:
    total = sum(r.violations for r in results)
    return {
        "ok": total == 0,
        "violations": total,
        "scope": {
            "tenants": scope.tenants,
            "transactions": scope.transactions,
            "balances": scope.balances,
            "ledger_entries": scope.ledger_entries,
            "outcome_events": scope.outcome_events,
        },
        "horizons": {
            "horizon_s": horizons.horizon_s,
            "stuck_processing_s": horizons.stuck_processing_s,
        },
        "checks": [
            {
                "check": r.check.name,
                "title": r.check.title,
                "scope": r.check.scope,
                "violations": r.violations,
                "truncated": r.truncated,
                "details": [v.to_json() for v in r.details],
            }
            for r in results
        ],
    }
