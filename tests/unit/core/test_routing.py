"""Which gateways may take a transaction, in priority order (paystream_core.routing)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from paystream_core.routing import Candidate, Route, TenantConnection, candidates
from paystream_core.statuses import TransactionType

D, W = TransactionType.DEPOSIT, TransactionType.WITHDRAWAL
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def route(
    gateway: str,
    priority: int,
    *,
    kind: TransactionType = D,
    country: str = "DE",
    enabled: bool = True,
    currencies: Sequence[str] = ("EUR",),
    min_amount_minor: int = 1,
    max_amount_minor: int | None = None,
) -> Route:
    return Route(
        gateway,
        f"p-{gateway}",
        country,
        kind,
        priority,
        enabled,
        frozenset(currencies),
        min_amount_minor,
        max_amount_minor,
    )


def conn(gateway: str, *, age_s: int = 0, enabled: bool = True) -> TenantConnection:
    return TenantConnection(gateway, uuid.uuid4(), enabled, T0 - timedelta(seconds=age_s))


def pick(
    routes: Sequence[Route],
    connections: Sequence[TenantConnection],
    *,
    country: str = "DE",
    kind: TransactionType = D,
    currency: str = "EUR",
    amount_minor: int = 1000,
) -> list[Candidate]:
    return candidates(
        routes,
        connections,
        country=country,
        kind=kind,
        currency=currency,
        amount_minor=amount_minor,
    )


def gateways(found: Sequence[Candidate]) -> list[str]:
    return [c.gateway for c in found]


def test_lowest_priority_number_first() -> None:
    routes = [route("c", 3), route("a", 1), route("b", 2)]
    connections = [conn("b"), conn("c"), conn("a")]
    found = pick(routes, connections)
    assert gateways(found) == ["a", "b", "c"]
    assert [c.priority for c in found] == [1, 2, 3]
    assert found[0] == Candidate("a", "p-a", connections[2].connection_id, 1)


def test_a_disabled_route_or_gateway_is_skipped() -> None:
    # Route.enabled is "the route and its gateway are both enabled".
    routes = [route("a", 1, enabled=False), route("b", 2)]
    assert gateways(pick(routes, [conn("a"), conn("b")])) == ["b"]


def test_country_and_type_must_match() -> None:
    routes = [route("a", 1, country="FR"), route("b", 2, kind=W), route("c", 3)]
    connections = [conn("a"), conn("b"), conn("c")]
    assert gateways(pick(routes, connections)) == ["c"]
    assert gateways(pick(routes, connections, kind=W)) == ["b"]
    assert gateways(pick(routes, connections, country="FR")) == ["a"]
    assert pick(routes, connections, country="JP") == []


def test_the_gateway_must_take_the_currency() -> None:
    routes = [route("a", 1, currencies=("USD",)), route("b", 2, currencies=("EUR", "USD"))]
    connections = [conn("a"), conn("b")]
    assert gateways(pick(routes, connections)) == ["b"]
    assert gateways(pick(routes, connections, currency="USD")) == ["a", "b"]
    assert pick(routes, connections, currency="GBP") == []


def test_min_and_max_amount_are_inclusive() -> None:
    routes = [route("a", 1, min_amount_minor=100, max_amount_minor=500), route("b", 2)]
    connections = [conn("a"), conn("b")]
    assert gateways(pick(routes, connections, amount_minor=99)) == ["b"]
    assert gateways(pick(routes, connections, amount_minor=100)) == ["a", "b"]
    assert gateways(pick(routes, connections, amount_minor=500)) == ["a", "b"]
    assert gateways(pick(routes, connections, amount_minor=501)) == ["b"]


def test_no_connection_or_a_disabled_one_means_no_candidate() -> None:
    routes = [route("a", 1), route("b", 2), route("c", 3)]
    assert gateways(pick(routes, [conn("b", enabled=False), conn("c")])) == ["c"]
    assert pick(routes, []) == []


def test_the_oldest_enabled_connection_wins() -> None:
    new, old = conn("a", age_s=10), conn("a", age_s=20)
    older_disabled = conn("a", age_s=30, enabled=False)
    [found] = pick([route("a", 1)], [new, older_disabled, old])
    assert found.connection_id == old.connection_id


def test_one_candidate_per_gateway() -> None:
    connections = [conn("a", age_s=i) for i in range(3)] + [conn("b")]
    found = pick([route("a", 1), route("b", 2)], connections)
    assert gateways(found) == ["a", "b"]
