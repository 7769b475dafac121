"""Which gateways may take a transaction, in priority order (design.md §1, seed 003).

The configuration (routes per country and type, gateway limits, the tenant's connections)
is read by the storage layer, possibly from a cache; the rule lives here.
`paystream_core.ranking` then orders the candidates by recent health and weight.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from paystream_core.statuses import TransactionType


@dataclass(frozen=True, slots=True)
class Route:
    """Gateway `gateway` serves `country` for `kind` at `priority` (1 = first)."""

    gateway: str
    provider: str
    country: str
    kind: TransactionType
    priority: int
    enabled: bool  # the route and its gateway are both enabled
    currencies: frozenset[str]
    min_amount_minor: int
    max_amount_minor: int | None
    # Its share of the volume among routes of equal priority (`paystream_core.ranking`).
    weight: int = 100


@dataclass(frozen=True, slots=True)
class TenantConnection:
    """One of the tenant's credentials sets at a gateway."""

    gateway: str
    connection_id: uuid.UUID
    enabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Candidate:
    gateway: str
    provider: str
    connection_id: uuid.UUID
    priority: int
    weight: int = 100


def candidates(
    routes: Iterable[Route],
    connections: Iterable[TenantConnection],
    *,
    country: str,
    kind: TransactionType,
    currency: str,
    amount_minor: int,
) -> list[Candidate]:
    """Enabled routes for the country and type, on gateways that take the currency and
    amount and where the tenant has an enabled connection; lowest priority number first,
    one connection per gateway (the oldest enabled one)."""
    usable: dict[str, list[TenantConnection]] = {}
    for connection in connections:
        if connection.enabled:
            usable.setdefault(connection.gateway, []).append(connection)
    ranked: list[tuple[int, datetime, Candidate]] = []
    for route in routes:
        if not (
            route.enabled
            and route.country == country
            and route.kind == kind
            and currency in route.currencies
            and route.min_amount_minor <= amount_minor
            and (route.max_amount_minor is None or amount_minor <= route.max_amount_minor)
        ):
            continue
        for connection in usable.get(route.gateway, ()):
            candidate = Candidate(
                route.gateway,
                route.provider,
                connection.connection_id,
                route.priority,
                route.weight,
            )
            ranked.append((route.priority, connection.created_at, candidate))
    ranked.sort(key=lambda entry: (entry[0], entry[1]))
    seen: set[str] = set()
    out: list[Candidate] = []
    for _, _, candidate in ranked:
        if candidate.gateway not in seen:
            seen.add(candidate.gateway)
            out.append(candidate)
    return out
