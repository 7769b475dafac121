"""Routing as operators change it (`paystream routes`): the routes of a country and type
with their gateways' limits, a new priority list (with weights among equal priorities), one
route enabled or disabled, a gateway's limits; each change recorded in `routing_changes`
(who, when, before and after).

Every function runs in the caller's owner-role session, so one command is one database
transaction: the change and its record commit together, and a refused command (a
`RoutingError`, raised before anything is written) leaves both untouched. The writes land
on gateway_countries or gateways, whose `config_changed` trigger (migration 0006) moves
config_version in the same transaction; every running worker sees the new version at its
next unit of work and drops the routes it cached (config_cache), with no restart.

Concurrent changes are serialised per country (its `countries` row is locked) or per
gateway (its `gateways` row), so `before` is always what the change replaced.

Limits (currencies, smallest and largest amount) belong to a gateway and apply to every
route of that gateway: that is what the worker reads (payments._ROUTES) and what
`paystream_core.routing.candidates` honours. There are no per-route limits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_core.countries import ISO_COUNTRIES
from paystream_core.limits import MAX_AMOUNT_MINOR, forbidden_character
from paystream_core.money import CURRENCY_EXPONENTS
from paystream_core.routing import TenantConnection
from paystream_storage.models import Connection, Country, Gateway, GatewayCountry, RoutingChange

KINDS = ("deposit", "withdrawal")
ACTOR_MAX = 200
COUNTRY_NAME_MAX = 100
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 10_000  # the column's check (migration 0013)


class RoutingError(ValueError):
    """A change refused before anything was written; the message says why."""


@dataclass(frozen=True, slots=True)
class RouteView:
    """One route with what decides whether it is used: its own switch, its gateway's
    (`paystream gateways down|up`) and the gateway's limits."""

    country: str
    kind: str
    priority: int
    gateway: str
    provider: str
    route_enabled: bool
    gateway_enabled: bool
    currencies: tuple[str, ...]
    min_amount_minor: int
    max_amount_minor: int | None
    weight: int = DEFAULT_WEIGHT

    @property
    def active(self) -> bool:
        return self.route_enabled and self.gateway_enabled

    @property
    def state(self) -> str:
        if not self.route_enabled:
            return "disabled"
        return "enabled" if self.gateway_enabled else "gateway-down"

    def as_json(self) -> dict[str, Any]:
        return {
            "country": self.country,
            "type": self.kind,
            "priority": self.priority,
            "weight": self.weight,
            "gateway": self.gateway,
            "provider": self.provider,
            "state": self.state,
            "route_enabled": self.route_enabled,
            "gateway_enabled": self.gateway_enabled,
            "currencies": list(self.currencies),
            "min_amount_minor": self.min_amount_minor,
            "max_amount_minor": self.max_amount_minor,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """A row of `routing_changes`."""

    id: int
    changed_at: datetime
    actor: str
    action: str
    country: str | None
    kind: str | None
    gateway: str | None
    before: Any
    after: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "changed_at": self.changed_at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "country": self.country,
            "type": self.kind,
            "gateway": self.gateway,
            "before": self.before,
            "after": self.after,
        }


async def list_routes(
    session: AsyncSession, *, country: str | None = None, kind: str | None = None
) -> list[RouteView]:
    """Routes by country, type and priority; an unknown country or type is refused."""
    if kind is not None:
        _check_kind(kind)
    query = (
        select(GatewayCountry, Gateway)
        .join(Gateway, Gateway.code == GatewayCountry.gateway_code)
        .order_by(
            GatewayCountry.country,
            GatewayCountry.transaction_type,
            GatewayCountry.priority,
            GatewayCountry.gateway_code,
        )
    )
    if country is not None:
        if await session.get(Country, country) is None:
            raise RoutingError(await _unknown_country(session, country))
        query = query.where(GatewayCountry.country == country)
    if kind is not None:
        query = query.where(GatewayCountry.transaction_type == kind)
    return [_view(route, gw) for route, gw in await session.execute(query)]


async def tenant_connections(session: AsyncSession, tenant_id: uuid.UUID) -> list[TenantConnection]:
    """The tenant's connections as a gateway worker reads them for routing (the payment
    store's connections query): which gateways it may use, and their age, by which a
    worker orders gateways of equal priority and weight."""
    query = select(
        Connection.gateway_code, Connection.id, Connection.enabled, Connection.created_at
    ).where(Connection.tenant_id == tenant_id)
    return [TenantConnection(*row) for row in await session.execute(query)]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One gateway of a `set` list: its priority and, if given, its weight."""

    gateway: str
    priority: int
    weight: int | None = None


def parse_levels(levels: Sequence[str]) -> list[RouteSpec]:
    """`routes set` arguments, one priority level each, first level first: a gateway
    (`stripe`), or gateways of equal priority separated by commas, each with an optional
    weight (`jsonpay:70,stripe:30`)."""
    specs: list[RouteSpec] = []
    for priority, level in enumerate(levels, start=1):
        entries = [entry.strip() for entry in level.split(",")]
        if not all(entries):
            raise RoutingError(f"empty gateway name in {level!r}")
        for entry in entries:
            code, colon, weight = entry.partition(":")
            specs.append(
                RouteSpec(code.strip(), priority, _weight(entry, weight) if colon else None)
            )
    return specs


def _weight(entry: str, raw: str) -> int:
    try:
        weight = int(raw.strip())
    except ValueError:
        weight = 0
    if not 1 <= weight <= MAX_WEIGHT:
        raise RoutingError(f"weight in {entry!r} must be a whole number from 1 to {MAX_WEIGHT}")
    return weight


async def set_routes(
    session: AsyncSession,
    *,
    country: str,
    kind: str,
    gateways: Sequence[str],
    actor: str,
    country_name: str | None = None,
) -> Change | None:
    """Make `gateways` the routes of `country` and `kind`: one priority level per item,
    first level first (priority 1), each a gateway or several of equal priority with their
    weights (`parse_levels`: "jsonpay:70,stripe:30"); routes of other gateways are removed.
    A gateway that already routed them keeps its enabled/disabled switch (re-ordering
    never re-enables what an operator disabled) and, unless one is given, its weight; a new
    one starts enabled, weighing 100. `country_name` adds a country not routed before.
    None when the routes already were exactly these."""
    _check_kind(kind)
    actor = _check_actor(actor)
    if not gateways:
        raise RoutingError("name at least one gateway (to stop routing, disable the routes)")
    specs = parse_levels(gateways)
    codes = [spec.gateway for spec in specs]
    repeated = sorted({code for code in codes if codes.count(code) > 1})
    if repeated:
        raise RoutingError(f"gateway listed more than once: {', '.join(repeated)}")
    await _check_gateways(session, codes)
    if country_name is not None:
        await _add_country(session, country, country_name)
    await _lock_country(session, country)
    before = await _routes_json(session, country, kind)
    switch = {route["gateway"]: route["enabled"] for route in before}
    weights = {route["gateway"]: route["weight"] for route in before}
    after = [
        {
            "gateway": spec.gateway,
            "priority": spec.priority,
            "enabled": switch.get(spec.gateway, True),
            "weight": spec.weight or weights.get(spec.gateway, DEFAULT_WEIGHT),
        }
        for spec in specs
    ]
    if _ordered(after) == before:
        return None
    dropped = [route["gateway"] for route in before if route["gateway"] not in codes]
    if dropped:
        await session.execute(
            delete(GatewayCountry).where(
                GatewayCountry.country == country,
                GatewayCountry.transaction_type == kind,
                GatewayCountry.gateway_code.in_(dropped),
            )
        )
    rows = [
        {
            "gateway_code": route["gateway"],
            "country": country,
            "transaction_type": kind,
            "priority": route["priority"],
            "enabled": route["enabled"],
            "weight": route["weight"],
        }
        for route in after
    ]
    upsert = insert(GatewayCountry).values(rows)
    await session.execute(
        upsert.on_conflict_do_update(
            index_elements=["gateway_code", "country", "transaction_type"],
            set_={"priority": upsert.excluded.priority, "weight": upsert.excluded.weight},
        )
    )
    return await _record(session, actor, "set", country, kind, None, before, after)


def _ordered(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As `_routes_json` reads them back: by priority, then gateway code."""
    return sorted(routes, key=lambda route: (route["priority"], route["gateway"]))


async def set_route_enabled(
    session: AsyncSession,
    *,
    country: str,
    kind: str,
    gateway: str,
    enabled: bool,
    actor: str,
) -> Change | None:
    """Switch one route on or off (its priority is kept). None when it already was."""
    _check_kind(kind)
    actor = _check_actor(actor)
    await _check_gateways(session, [gateway])
    await _lock_country(session, country)
    before = await _routes_json(session, country, kind)
    if gateway not in {route["gateway"] for route in before}:
        routed = ", ".join(route["gateway"] for route in before) or "none"
        raise RoutingError(
            f"gateway {gateway!r} does not route {country} {kind}s (its routes: {routed});"
            f" add it with `paystream routes set`"
        )
    after = [
        {**route, "enabled": enabled} if route["gateway"] == gateway else route for route in before
    ]
    if after == before:
        return None
    await session.execute(
        update(GatewayCountry)
        .where(
            GatewayCountry.country == country,
            GatewayCountry.transaction_type == kind,
            GatewayCountry.gateway_code == gateway,
        )
        .values(enabled=enabled)
    )
    action = "enable" if enabled else "disable"
    return await _record(session, actor, action, country, kind, gateway, before, after)


async def gateway_limits(session: AsyncSession, gateway: str) -> dict[str, Any]:
    """What `gateway` takes: currencies, smallest and largest amount (minor units)."""
    row = await session.get(Gateway, gateway)
    if row is None:
        raise RoutingError(await _unknown_gateways(session, [gateway]))
    return _limits_json(row.currencies, row.min_amount_minor, row.max_amount_minor)


async def set_gateway_limits(
    session: AsyncSession,
    *,
    gateway: str,
    actor: str,
    currencies: Sequence[str] | None = None,
    min_amount_minor: int | None = None,
    max_amount_minor: int | None = None,
    no_max: bool = False,
) -> Change | None:
    """Change what a gateway takes, on every route it serves: the currencies, the smallest
    and the largest amount in minor units (`no_max`: no largest amount besides the
    per-currency ceiling). Arguments left None stay as they are. None when nothing moved."""
    actor = _check_actor(actor)
    if no_max and max_amount_minor is not None:
        raise RoutingError("give a largest amount or no largest amount, not both")
    row = (
        await session.execute(select(Gateway).where(Gateway.code == gateway).with_for_update())
    ).scalar_one_or_none()
    if row is None:
        raise RoutingError(await _unknown_gateways(session, [gateway]))
    before = _limits_json(row.currencies, row.min_amount_minor, row.max_amount_minor)
    new_currencies = list(row.currencies) if currencies is None else _check_currencies(currencies)
    new_min = row.min_amount_minor if min_amount_minor is None else min_amount_minor
    new_max = (
        None if no_max else (row.max_amount_minor if max_amount_minor is None else max_amount_minor)
    )
    for name, value in (("smallest", new_min), ("largest", new_max)):
        if value is not None and not 1 <= value <= MAX_AMOUNT_MINOR:
            raise RoutingError(
                f"the {name} amount must be between 1 and {MAX_AMOUNT_MINOR} minor units,"
                f" not {value}"
            )
    if new_max is not None and new_max < new_min:
        raise RoutingError(
            f"the largest amount ({new_max}) is below the smallest amount ({new_min})"
        )
    after = _limits_json(new_currencies, new_min, new_max)
    if after == before:
        return None
    await session.execute(
        update(Gateway)
        .where(Gateway.code == gateway)
        .values(currencies=new_currencies, min_amount_minor=new_min, max_amount_minor=new_max)
    )
    return await _record(session, actor, "limits", None, None, gateway, before, after)


async def history(
    session: AsyncSession,
    *,
    country: str | None = None,
    kind: str | None = None,
    gateway: str | None = None,
    limit: int = 50,
) -> list[Change]:
    """Newest first. `gateway` matches its limit changes and every route change that
    listed it before or after."""
    if kind is not None:
        _check_kind(kind)
    query: Select[RoutingChange] = (
        select(RoutingChange).order_by(RoutingChange.id.desc()).limit(limit)
    )
    if country is not None:
        query = query.where(RoutingChange.country == country)
    if kind is not None:
        query = query.where(RoutingChange.transaction_type == kind)
    if gateway is not None:
        listed = func.jsonb_build_array(func.jsonb_build_object("gateway", gateway))
        query = query.where(
            or_(
                RoutingChange.gateway_code == gateway,
                and_(
                    RoutingChange.action == "set",
                    or_(
                        RoutingChange.before.contains(listed), RoutingChange.after.contains(listed)
                    ),
                ),
            )
        )
    return [_change(row) for row in (await session.execute(query)).scalars()]


def _view(route: GatewayCountry, gw: Gateway) -> RouteView:
    return RouteView(
        country=route.country,
        kind=route.transaction_type,
        priority=route.priority,
        gateway=route.gateway_code,
        provider=gw.provider,
        route_enabled=route.enabled,
        gateway_enabled=gw.enabled,
        currencies=tuple(gw.currencies),
        min_amount_minor=gw.min_amount_minor,
        max_amount_minor=gw.max_amount_minor,
        weight=route.weight,
    )


def _change(row: RoutingChange) -> Change:
    return Change(
        id=row.id,
        changed_at=row.changed_at,
        actor=row.actor,
        action=row.action,
        country=row.country,
        kind=row.transaction_type,
        gateway=row.gateway_code,
        before=row.before,
        after=row.after,
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RoutingError(f"unknown transaction type {kind!r} (deposit or withdrawal)")


def _check_actor(actor: str) -> str:
    actor = actor.strip()
    if not actor:
        raise RoutingError("the actor is empty: name who makes the change with --actor")
    if len(actor) > ACTOR_MAX:
        raise RoutingError(f"the actor is longer than {ACTOR_MAX} characters")
    bad = forbidden_character(actor)
    if bad is not None:
        raise RoutingError(f"the actor holds {bad}")
    return actor


def _check_currencies(currencies: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(code.strip().upper() for code in currencies if code.strip()))
    if not wanted:
        raise RoutingError("name at least one currency")
    unknown = [code for code in wanted if code not in CURRENCY_EXPONENTS]
    if unknown:
        raise RoutingError(
            f"unknown currency: {', '.join(unknown)} (ISO 4217 codes paystream accepts)"
        )
    return wanted


def _limits_json(currencies: Sequence[str], low: int, high: int | None) -> dict[str, Any]:
    return {"currencies": list(currencies), "min_amount_minor": low, "max_amount_minor": high}


async def _check_gateways(session: AsyncSession, codes: Sequence[str]) -> None:
    known = set(
        (await session.execute(select(Gateway.code).where(Gateway.code.in_(codes)))).scalars()
    )
    if not set(codes) <= known:
        raise RoutingError(await _unknown_gateways(session, [c for c in codes if c not in known]))


async def _unknown_gateways(session: AsyncSession, unknown: Sequence[str]) -> str:
    every = (await session.execute(select(Gateway.code).order_by(Gateway.code))).scalars()
    names = ", ".join(repr(code) for code in unknown)
    return f"no gateway {names} (gateways: {', '.join(every) or 'none'})"


async def _unknown_country(session: AsyncSession, country: str) -> str:
    every = (await session.execute(select(Country.code).order_by(Country.code))).scalars()
    return (
        f"no country {country!r} in the routing (countries: {', '.join(every) or 'none'});"
        " `paystream routes set` adds one with --country-name"
    )


async def _add_country(session: AsyncSession, country: str, name: str) -> None:
    """A country routed for the first time needs its row; an existing one is kept as is."""
    if country not in ISO_COUNTRIES:
        raise RoutingError(f"{country!r} is not an ISO 3166-1 alpha-2 country code")
    name = name.strip()
    if not name or len(name) > COUNTRY_NAME_MAX or forbidden_character(name) is not None:
        raise RoutingError(
            f"the country name must be 1 to {COUNTRY_NAME_MAX} characters, no control characters"
        )
    await session.execute(
        insert(Country)
        .values(code=country, name=name)
        .on_conflict_do_nothing(index_elements=["code"])
    )


async def _lock_country(session: AsyncSession, country: str) -> None:
    locked = (
        await session.execute(select(Country.code).where(Country.code == country).with_for_update())
    ).scalar_one_or_none()
    if locked is None:
        raise RoutingError(await _unknown_country(session, country))


async def _routes_json(session: AsyncSession, country: str, kind: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(
            GatewayCountry.gateway_code,
            GatewayCountry.priority,
            GatewayCountry.enabled,
            GatewayCountry.weight,
        )
        .where(GatewayCountry.country == country, GatewayCountry.transaction_type == kind)
        .order_by(GatewayCountry.priority, GatewayCountry.gateway_code)
    )
    return [
        {"gateway": code, "priority": priority, "enabled": enabled, "weight": weight}
        for code, priority, enabled, weight in rows
    ]


async def _record(
    session: AsyncSession,
    actor: str,
    action: str,
    country: str | None,
    kind: str | None,
    gateway: str | None,
    before: Any,
    after: Any,
) -> Change:
    row = RoutingChange(
        actor=actor,
        action=action,
        country=country,
        transaction_type=kind,
        gateway_code=gateway,
        before=before,
        after=after,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row, ["changed_at"])
    return _change(row)
