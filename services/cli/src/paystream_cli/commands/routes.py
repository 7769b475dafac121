"""`paystream routes list|set|disable|enable|limits|history`: routing without SQL.

Exit codes: 0 done (or nothing to change), 1 refused (unknown country, gateway, route, bad
value: nothing was changed and nothing recorded), 2 usage or settings error.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from paystream_cli.common import database, run_owner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_storage.routes import Change, RouteView

T = TypeVar("T")

KIND = click.Choice(["deposit", "withdrawal"])
APPLIES = "every worker routes accordingly from its next unit of work, without a restart"


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return ""


def _actor_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--actor",
        default=_default_actor,
        show_default="the OS user",
        help="Who makes the change, as recorded in `routes history`.",
    )(function)


def _country(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else value.strip().upper()


def _refuse(message: str) -> NoReturn:
    """Print `paystream: MESSAGE` to stderr and exit 1: the command was refused and
    changed nothing (its transaction was rolled back)."""
    click.echo(f"paystream: {message}", err=True)
    sys.exit(1)


def _run(action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`action` in one owner-role transaction; a RoutingError rolls it back and exits 1."""
    from paystream_storage.routes import RoutingError

    try:
        return run_owner(database(), action)
    except RoutingError as exc:
        _refuse(str(exc))


@click.group()
def routes() -> None:
    """Routing: which gateways serve a country and transaction type, in priority order.

    Changes take effect in every running worker at its next unit of work (the same
    mechanism as `paystream gateways down|up`) and are recorded with who and when
    (`paystream routes history`).
    """


@routes.command("list")
@click.option("--country", callback=_country, help="Only this country (ISO code).")
@click.option("--type", "kind", type=KIND, help="Only deposits or withdrawals.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of routes.")
def routes_list(country: str | None, kind: str | None, as_json: bool) -> None:
    """Routes by country, type and priority, with their state and their gateway's limits.

    STATE is `enabled`, `disabled` (this route switched off) or `gateway-down` (its
    gateway is taken out with `paystream gateways down`); only enabled routes are used.
    """
    from paystream_storage.routes import list_routes

    async def action(session: AsyncSession) -> list[RouteView]:
        return await list_routes(session, country=country, kind=kind)

    views = _run(action)
    if as_json:
        click.echo(json.dumps([view.as_json() for view in views], indent=2))
        return
    if not views:
        click.echo("no routes")
        return
    header = ("COUNTRY", "TYPE", "PRIO", "GATEWAY", "PROVIDER", "STATE", "CURRENCIES", "MIN", "MAX")
    rows = [
        (
            v.country,
            v.kind,
            str(v.priority),
            v.gateway,
            v.provider,
            v.state,
            ",".join(v.currencies),
            str(v.min_amount_minor),
            "-" if v.max_amount_minor is None else str(v.max_amount_minor),
        )
        for v in views
    ]
    _table(header, rows)


@routes.command("set")
@click.argument("country", callback=_country)
@click.argument("kind", metavar="TYPE", type=KIND)
@click.argument("gateways", nargs=-1, required=True)
@click.option(
    "--country-name", help="Route a country not routed before, under this name (e.g. Spain)."
)
@_actor_option
def routes_set(
    country: str, kind: str, gateways: tuple[str, ...], country_name: str | None, actor: str
) -> None:
    """Route COUNTRY's TYPE (deposit or withdrawal) to GATEWAYS, first one first.

    Replaces the whole list: gateways left out stop routing it. A gateway that already
    routed it keeps its enabled/disabled switch; a new one starts enabled.
    """
    from paystream_storage.routes import set_routes

    async def action(session: AsyncSession) -> tuple[Change | None, list[RouteView]]:
        change = await set_routes(
            session,
            country=country,
            kind=kind,
            gateways=gateways,
            actor=actor,
            country_name=country_name,
        )
        return change, await _current(session, country, kind)

    change, views = _run(action)
    if change is None:
        click.echo(f"{country} {kind}s already route {_describe(views)}: nothing changed")
        return
    click.echo(f"{country} {kind}s: {_describe_json(change.before)} -> {_describe(views)}")
    _applied(change)
    _warn_inactive(views)


@routes.command("disable")
@click.argument("country", callback=_country)
@click.argument("kind", metavar="TYPE", type=KIND)
@click.argument("gateway")
@_actor_option
def routes_disable(country: str, kind: str, gateway: str, actor: str) -> None:
    """Stop routing COUNTRY's TYPE to GATEWAY (its place in the list is kept)."""
    _switch(country, kind, gateway, False, actor)


@routes.command("enable")
@click.argument("country", callback=_country)
@click.argument("kind", metavar="TYPE", type=KIND)
@click.argument("gateway")
@_actor_option
def routes_enable(country: str, kind: str, gateway: str, actor: str) -> None:
    """Route COUNTRY's TYPE to GATEWAY again, at its place in the list."""
    _switch(country, kind, gateway, True, actor)


@routes.command("limits")
@click.argument("gateway")
@click.option("--currencies", help="Comma-separated ISO 4217 codes the gateway takes.")
@click.option("--min-minor", type=int, help="Smallest amount it takes, in minor units.")
@click.option("--max-minor", type=int, help="Largest amount it takes, in minor units.")
@click.option("--no-max", is_flag=True, help="No largest amount (the currency ceiling applies).")
@_actor_option
def routes_limits(
    gateway: str,
    currencies: str | None,
    min_minor: int | None,
    max_minor: int | None,
    no_max: bool,
    actor: str,
) -> None:
    """Change what GATEWAY takes on every route it serves (currencies, amount range).

    Limits belong to the gateway, not to one route: a transaction goes to a route only if
    its gateway takes the currency and the amount. Without options, prints the limits.
    """
    from paystream_storage.routes import gateway_limits, set_gateway_limits

    codes = None if currencies is None else currencies.split(",")
    read_only = codes is None and min_minor is None and max_minor is None and not no_max

    async def action(session: AsyncSession) -> Change | dict[str, Any] | None:
        if read_only:
            return await gateway_limits(session, gateway)
        return await set_gateway_limits(
            session,
            gateway=gateway,
            actor=actor,
            currencies=codes,
            min_amount_minor=min_minor,
            max_amount_minor=max_minor,
            no_max=no_max,
        )

    result = _run(action)
    if isinstance(result, dict):
        click.echo(f"{gateway}: {_describe_limits(result)}")
    elif result is None:
        click.echo(f"{gateway} limits unchanged: nothing changed")
    else:
        click.echo(
            f"{gateway}: {_describe_limits(result.before)} -> {_describe_limits(result.after)}"
        )
        _applied(result)


@routes.command("history")
@click.option("--country", callback=_country, help="Only changes of this country's routes.")
@click.option("--type", "kind", type=KIND, help="Only changes of deposit or withdrawal routes.")
@click.option("--gateway", help="Only changes that involved this gateway.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, newest first.")
def routes_history(
    country: str | None, kind: str | None, gateway: str | None, limit: int, as_json: bool
) -> None:
    """Routing changes, newest first: when, who, what, before -> after."""
    from paystream_storage.routes import history

    async def action(session: AsyncSession) -> list[Change]:
        return await history(session, country=country, kind=kind, gateway=gateway, limit=limit)

    changes = _run(action)
    if as_json:
        click.echo(json.dumps([change.as_json() for change in changes], indent=2))
        return
    if not changes:
        click.echo("no routing changes")
        return
    header = ("ID", "WHEN (UTC)", "ACTOR", "ACTION", "ROUTE", "BEFORE -> AFTER")
    _table(header, [_history_row(change) for change in changes])


def _switch(country: str, kind: str, gateway: str, enabled: bool, actor: str) -> None:
    from paystream_storage.routes import set_route_enabled

    async def action(session: AsyncSession) -> tuple[Change | None, list[RouteView]]:
        change = await set_route_enabled(
            session, country=country, kind=kind, gateway=gateway, enabled=enabled, actor=actor
        )
        return change, await _current(session, country, kind)

    change, views = _run(action)
    state = "enabled" if enabled else "disabled"
    if change is None:
        click.echo(f"{gateway} already {state} for {country} {kind}s: nothing changed")
        return
    click.echo(f"{gateway} {state} for {country} {kind}s: now {_describe(views)}")
    _applied(change)
    _warn_inactive(views)


async def _current(session: AsyncSession, country: str, kind: str) -> list[RouteView]:
    from paystream_storage.routes import list_routes

    return await list_routes(session, country=country, kind=kind)


def _applied(change: Change) -> None:
    when = change.changed_at.astimezone().isoformat(timespec="seconds")
    click.echo(f"{APPLIES} (change #{change.id} by {change.actor} at {when})")


def _warn_inactive(views: Sequence[RouteView]) -> None:
    if not any(view.active for view in views):
        kind = views[0].kind if views else ""
        click.echo(
            f"warning: no enabled route left: new {kind}s there are rejected"
            " (no_gateway_available)",
            err=True,
        )


def _describe(views: Sequence[RouteView]) -> str:
    marks = {"disabled": " (disabled)", "gateway-down": " (gateway down)", "enabled": ""}
    return ", ".join(f"{view.gateway}{marks[view.state]}" for view in views) or "nothing"


def _describe_json(routes: Any) -> str:
    if not routes:
        return "nothing"
    return ", ".join(
        route["gateway"] + ("" if route["enabled"] else " (disabled)") for route in routes
    )


def _describe_limits(limits: Any) -> str:
    high = limits["max_amount_minor"]
    return (
        f"{','.join(limits['currencies'])}, amounts {limits['min_amount_minor']}"
        f"..{'' if high is None else high} minor units"
    )


def _history_row(change: Change) -> tuple[str, ...]:
    if change.action == "limits":
        route = f"gateway {change.gateway}"
        what = f"{_describe_limits(change.before)} -> {_describe_limits(change.after)}"
    else:
        route = f"{change.country} {change.kind}"
        if change.gateway is not None:
            route += f" {change.gateway}"
        what = f"{_describe_json(change.before)} -> {_describe_json(change.after)}"
    when = change.changed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (str(change.id), when, change.actor, change.action, route, what)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())
