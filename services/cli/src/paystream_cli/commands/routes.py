"""`paystream routes list|set|disable|enable|limits|history|explain`: routing without SQL.

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

from paystream_cli.common import database, run_owner, settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_config import RoutingSettings
    from paystream_core.ranking import Ranked
    from paystream_core.routing import TenantConnection
    from paystream_storage.route_health import Health
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
    header = (
        "COUNTRY",
        "TYPE",
        "PRIO",
        "GATEWAY",
        "PROVIDER",
        "STATE",
        "CURRENCIES",
        "MIN",
        "MAX",
        "WEIGHT",
    )
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
            str(v.weight),
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

    Each argument is one priority level: a gateway (`stripe`), or gateways of equal
    priority separated by commas, each with an optional weight that splits the volume
    between them (`jsonpay:70,stripe:30`, weights 1-10000, default 100):

      paystream routes set GB deposit jsonpay:70,stripe:30 soapbank

    Replaces the whole list: gateways left out stop routing it. A gateway that already
    routed it keeps its enabled/disabled switch and, unless given one, its weight; a new
    one starts enabled, weighing 100.
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


@routes.command("explain")
@click.argument("country", callback=_country)
@click.argument("kind", metavar="TYPE", type=KIND)
@click.argument("currency", callback=_country)
@click.option("--amount", help="Decimal amount (e.g. 100.00): only gateways that take it.")
@click.option(
    "--tenant",
    help="As this tenant's payments are ranked (name or id): only gateways where it has an"
    " enabled connection, equal weights in its order (oldest connection first).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def routes_explain(
    country: str, kind: str, currency: str, amount: str | None, tenant: str | None, as_json: bool
) -> None:
    """The order a gateway worker ranks COUNTRY's TYPE in CURRENCY now, and why.

    Each gateway with its priority, weight (and share among equal priorities), its
    success in the health window (every worker's final attempts: succeeded and declined),
    whether it is demoted (below PAYSTREAM_ROUTING_SUCCESS_FLOOR with at least
    PAYSTREAM_ROUTING_MIN_VOLUME attempts in PAYSTREAM_ROUTING_HEALTH_WINDOW_S) and the
    reason a worker records on the attempt. Equal priorities are listed heaviest first
    (a worker draws per payment, by weight). Workers read the stats every
    PAYSTREAM_ROUTING_HEALTH_REFRESH_S, so they may lag this by that much.

    A worker ranks one tenant's payment: it skips gateways where the tenant has no enabled
    connection and, among equal priorities and weights, tries the tenant's oldest connection
    first. Without --tenant, every gateway is listed and such ties are marked; with it, the
    order is that tenant's.
    """
    from paystream_cli.common import find_tenant
    from paystream_config import RoutingSettings
    from paystream_core.money import Money, MoneyError
    from paystream_storage.route_health import read_route_health
    from paystream_storage.routes import RoutingError, list_routes, tenant_connections

    policy_settings = settings(RoutingSettings)
    amount_minor: int | None = None
    if amount is not None:
        try:
            amount_minor = Money.parse(amount, currency).amount_minor
        except MoneyError as exc:
            _refuse(f"--amount: {exc}")

    async def action(
        session: AsyncSession,
    ) -> tuple[list[RouteView], Health, list[TenantConnection] | None]:
        connections = None
        if tenant is not None:
            found = await find_tenant(session, tenant)
            if found is None:
                raise RoutingError(f"no tenant {tenant!r}")
            connections = await tenant_connections(session, found.id)
        views = await list_routes(session, country=country, kind=kind)
        health = await read_route_health(session, policy_settings.routing_health_window_s)
        return views, health, connections

    views, health, connections = _run(action)
    explained = explain(
        views,
        health,
        policy_settings,
        country=country,
        kind=kind,
        currency=currency,
        amount_minor=amount_minor,
        connections=connections,
    )
    if as_json:
        click.echo(json.dumps(explained, indent=2))
        return
    click.echo(_explain_header(explained))
    if explained["order"]:
        header = ("RANK", "GATEWAY", "PRIO", "WEIGHT", "SHARE", "WINDOW", "DEMOTED", "REASON")
        _table(header, [_explain_row(entry) for entry in explained["order"]])
    else:
        click.echo(f"no gateway takes {country} {kind}s in {currency}: they are rejected")
    for entry in explained["skipped"]:
        click.echo(f"not used: {entry['gateway']} ({entry['why']})")
    tied = [entry["gateway"] for entry in explained["order"] if entry["tied"]]
    if tied:
        click.echo(
            f"tied ({', '.join(tied)}: same priority and weight): each tenant's worker tries"
            " the one it has the oldest connection at first; --tenant shows one tenant's order"
        )


def explain(
    views: Sequence[RouteView],
    health: Health,
    policy_settings: RoutingSettings,
    *,
    country: str,
    kind: str,
    currency: str,
    amount_minor: int | None,
    connections: Sequence[TenantConnection] | None = None,
) -> dict[str, Any]:
    """The ranking of `views` (COUNTRY's KIND routes) as a worker does it
    (`paystream_core.routing.candidates`, then `paystream_core.ranking.rank` with no draw),
    as JSON-ready data. `connections`: one tenant's, as the worker reads them (its order
    exactly); None: every gateway as if the tenant had one connection there, all of the
    same age, so entries whose order depends on the tenant are marked `tied`."""
    import uuid
    from datetime import datetime

    from paystream_core.ranking import rank
    from paystream_core.routing import Route, TenantConnection, candidates
    from paystream_core.statuses import TransactionType
    from paystream_gateway_worker.routing_state import health_policy

    policy = health_policy(policy_settings)
    routes = [
        Route(
            gateway=v.gateway,
            provider=v.provider,
            country=v.country,
            kind=TransactionType(v.kind),
            priority=v.priority,
            enabled=v.active,
            currencies=frozenset(v.currencies),
            min_amount_minor=v.min_amount_minor if amount_minor is not None else 1,
            max_amount_minor=v.max_amount_minor if amount_minor is not None else None,
            weight=v.weight,
        )
        for v in views
    ]
    tenant = connections is not None
    if connections is None:  # every gateway as if the tenant had a connection there
        connections = [
            TenantConnection(v.gateway, uuid.UUID(int=0), True, datetime.min) for v in views
        ]
    eligible = candidates(
        routes,
        connections,
        country=country,
        kind=TransactionType(kind),
        currency=currency,
        amount_minor=amount_minor if amount_minor is not None else 1,
    )
    stats = {g: s for (g, c, k), s in health.items() if (c, k) == (country, kind)}
    ranked = rank(eligible, stats, policy, None)
    # Without a tenant, peers of one priority, demotion and weight are in no order a
    # worker would use: it tries the tenant's oldest connection first.
    ties = [(r.demoted, r.candidate.priority, r.candidate.weight) for r in ranked]
    order = [
        _explained(position, r, tied=not tenant and ties.count(tie) > 1)
        for position, (r, tie) in enumerate(zip(ranked, ties, strict=True), start=1)
    ]
    used = {r.gateway for r in ranked}
    usable = {c.gateway for c in connections if c.enabled}
    skipped = [
        {"gateway": v.gateway, "why": _why_not(v, currency, amount_minor, usable)}
        for v in views
        if v.gateway not in used
    ]
    return {
        "country": country,
        "type": kind,
        "currency": currency,
        "amount_minor": amount_minor,
        "tenant_connections": tenant,
        "policy": {
            "success_floor": policy.success_floor,
            "window_s": policy.window_s,
            "min_volume": policy.min_volume,
        },
        "order": order,
        "skipped": skipped,
    }


def _explained(position: int, r: Ranked, *, tied: bool) -> dict[str, Any]:
    stats = r.stats
    return {
        "rank": position,
        "gateway": r.gateway,
        "provider": r.candidate.provider,
        "priority": r.candidate.priority,
        "weight": r.candidate.weight,
        "share": round(r.share, 4),
        "final": stats.final if stats else 0,
        "succeeded": stats.succeeded if stats else 0,
        "success_rate": round(stats.success_rate, 4) if stats and stats.final else None,
        "demoted": r.demoted,
        "decision": r.decision.value,
        "reason": r.reason,
        "tied": tied,
    }


def _why_not(view: RouteView, currency: str, amount_minor: int | None, usable: set[str]) -> str:
    if view.state != "enabled":
        return view.state
    if view.gateway not in usable:
        return "the tenant has no enabled connection there"
    if currency not in view.currencies:
        return f"does not take {currency}"
    return "amount out of its range" if amount_minor is not None else "not eligible"


def _explain_header(explained: dict[str, Any]) -> str:
    policy = explained["policy"]
    amount = explained["amount_minor"]
    what = "any amount" if amount is None else f"{amount} minor units"
    return (
        f"{explained['country']} {explained['type']}s in {explained['currency']} ({what});"
        f" health over the last {policy['window_s']:g}s, floor"
        f" {policy['success_floor'] * 100:g}%, min volume {policy['min_volume']}"
    )


def _explain_row(entry: dict[str, Any]) -> tuple[str, ...]:
    rate = entry["success_rate"]
    window = "-" if rate is None else f"{entry['succeeded']}/{entry['final']} ({rate * 100:.0f}%)"
    return (
        str(entry["rank"]),
        entry["gateway"],
        str(entry["priority"]),
        str(entry["weight"]),
        f"{entry['share'] * 100:.0f}%",
        window,
        "yes" if entry["demoted"] else "no",
        entry["reason"],
    )


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
    return _levels([(v.priority, v.gateway, v.weight, marks[v.state]) for v in views])


def _describe_json(routes: Any) -> str:
    # Changes recorded before routes had weights carry none: they weighed the default.
    return _levels(
        [
            (
                route["priority"],
                route["gateway"],
                route.get("weight", 100),
                "" if route["enabled"] else " (disabled)",
            )
            for route in routes or ()
        ]
    )


def _levels(routes: Sequence[tuple[int, str, int, str]]) -> str:
    """Priority levels in order, ", " between them; gateways of one level joined by " + "
    with their weights (a lone gateway's weight only when it is not the default)."""
    levels: dict[int, list[tuple[str, int, str]]] = {}
    for priority, gateway, weight, mark in routes:
        levels.setdefault(priority, []).append((gateway, weight, mark))
    out = []
    for _, level in sorted(levels.items()):
        shown = len(level) > 1 or any(weight != 100 for _, weight, _ in level)
        out.append(
            " + ".join(
                f"{gateway}{f':{weight}' if shown else ''}{mark}" for gateway, weight, mark in level
            )
        )
    return ", ".join(out) or "nothing"


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
