"""The gateway worker's routing by health and weight (`RoutingState` + `paystream_core.ranking`)
on the in-memory store: what each new attempt records, demotion and promotion as the
window's stats change, weighted splits, the metrics, and how the stats are read."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from paystream_core.ports import PaymentUnit
from paystream_core.routing import Candidate
from paystream_core.statuses import Status
from paystream_gateway_worker.routing_state import RoutingState
from paystream_gateways.protocol import Declined
from tests.support.fake_store import FakeStore
from tests.support.scripted_gateways import ok, refused
from tests.unit.services.worker_env import Env, make_env


def routed(env: Env, **settings: Any) -> RoutingState:
    """A fresh RoutingState with these routing settings, on its own registry."""
    state = RoutingState(
        env.deps.settings.model_copy(update=settings), CollectorRegistry(auto_describe=True)
    )
    env.deps.routing = state
    return state


def metric(state: RoutingState, name: str, **labels: str) -> float:
    value = state.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def first_attempt(env: Env, txn: uuid.UUID) -> tuple[str, str | None]:
    attempt = env.store.attempts_of(txn)[0]
    return attempt.gateway_code, attempt.route_reason


async def deposit(env: Env) -> uuid.UUID:
    txn, record = env.command()
    await env.run(record)
    return txn


async def test_each_new_attempt_records_why_its_gateway(env: Env) -> None:
    state = routed(env)
    env.gateway("gw_a", refused)
    env.gateway("gw_b", ok)
    txn = await deposit(env)
    assert env.store.status(txn) == Status.SUCCEEDED
    assert [(a.gateway_code, a.route_reason) for a in env.store.attempts_of(txn)] == [
        ("gw_a", "priority 1"),
        ("gw_b", "priority 2"),
    ]
    assert metric(state, "paystream_routing_decisions_total", reason="priority") == 2


async def test_a_declining_gateway_is_demoted_then_promoted_back(env: Env) -> None:
    state = routed(env, routing_min_volume=4, routing_success_floor=0.5, routing_health_window_s=60)
    env.gateway("gw_a", lambda r: Declined("do_not_honor", "no", False))
    env.gateway("gw_b", ok)
    for _ in range(4):
        assert env.store.status(await deposit(env)) == Status.FAILED  # a hard decline
    await state.refresh(env.store)
    assert state.health("DE", "deposit")["gw_a"].final == 4

    txn = await deposit(env)
    assert first_attempt(env, txn) == ("gw_b", "priority 2; ahead of demoted gw_a")
    assert env.store.status(txn) == Status.SUCCEEDED
    labels = {"gateway": "gw_a", "country": "DE", "type": "deposit"}
    assert metric(state, "paystream_routing_demoted", **labels) == 1
    assert metric(state, "paystream_routing_demotions_total", **labels) == 1
    assert metric(state, "paystream_routing_decisions_total", reason="demoted") == 1

    # Its declines age out of the window: promoted back, tried first again.
    env.store.clock = lambda: datetime.now(UTC) + timedelta(seconds=61)
    await state.refresh(env.store)
    assert metric(state, "paystream_routing_demoted", **labels) == 0
    env.gateway("gw_a", ok)
    assert first_attempt(env, await deposit(env)) == ("gw_a", "priority 1")
    assert metric(state, "paystream_routing_demotions_total", **labels) == 1


async def test_every_gateway_below_the_floor_changes_nothing(env: Env) -> None:
    state = routed(env, routing_min_volume=1)
    for name in ("gw_a", "gw_b", "gw_c"):
        env.gateway(name, lambda r: Declined("do_not_honor", "no", True))  # soft: next one
    await deposit(env)
    await state.refresh(env.store)
    txn = await deposit(env)
    gateway, reason = first_attempt(env, txn)
    assert gateway == "gw_a"
    assert reason == "priority 1; every candidate below floor: none demoted"


def weighted_env() -> Env:
    env = make_env()
    env.store.state.routes = []
    env.store.add_route("gw_a", priority=1, weight=70)
    env.store.add_route("gw_b", priority=1, weight=30)
    env.store.add_route("gw_c", priority=2)
    for name in ("gw_a", "gw_b", "gw_c"):
        env.gateway(name, ok)
    return env


async def test_equal_priorities_split_by_weight_over_short_runs() -> None:
    env = weighted_env()
    state = routed(env)
    firsts = [first_attempt(env, await deposit(env)) for _ in range(100)]
    gateways = [gateway for gateway, _ in firsts]
    assert abs(gateways.count("gw_a") - 70) <= 2
    assert gateways.count("gw_a") + gateways.count("gw_b") == 100
    assert firsts[0] == ("gw_a", "priority 1; weight 70 of 100 (draw 0.00)")
    assert firsts[1] == ("gw_a", "priority 1; weight 70 of 100 (draw 0.62)")
    assert firsts[2] == ("gw_a", "priority 1; weight 70 of 100 (draw 0.24)")
    assert firsts[3] == ("gw_b", "priority 1; weight 30 of 100 (draw 0.85)")
    assert metric(state, "paystream_routing_decisions_total", reason="weight") == 100


async def test_only_a_draw_that_chose_is_consumed() -> None:
    env = weighted_env()
    state = routed(env)
    env.gateway("gw_a", refused)
    env.gateway("gw_b", refused)
    # Drawn gw_a (draw 0.00), falls back to gw_b (not drawn) then gw_c (priority 2).
    txn = await deposit(env)
    assert [(a.gateway_code, a.route_reason) for a in env.store.attempts_of(txn)] == [
        ("gw_a", "priority 1; weight 70 of 100 (draw 0.00)"),
        ("gw_b", "priority 1; weight 30 of 100 (not drawn)"),
        ("gw_c", "priority 2"),
    ]
    # One draw consumed: the next transaction is ranked with the second one.
    env.gateway("gw_a", ok)
    assert first_attempt(env, await deposit(env))[1] == ("priority 1; weight 70 of 100 (draw 0.62)")
    assert metric(state, "paystream_routing_decisions_total", reason="weight") == 3
    assert metric(state, "paystream_routing_decisions_total", reason="priority") == 1


async def test_a_decision_counts_once_its_attempt_is_stored() -> None:
    env = weighted_env()
    state = routed(env)
    txn = env.store.transaction(await deposit(env))
    peers = [
        Candidate("gw_a", "a", uuid.uuid4(), 1, 70),
        Candidate("gw_b", "b", uuid.uuid4(), 1, 30),
    ]
    counted = metric(state, "paystream_routing_decisions_total", reason="weight")
    ranked = state.rank(txn, peers)
    assert state.chose(txn, ranked, "gw_a", count=False) == (
        "priority 1; weight 70 of 100 (draw 0.62)"
    )
    # Not yet: a racing worker may record this attempt first. The draw is consumed anyway
    # (no await between rank and chose: no other plan ranked with it).
    assert metric(state, "paystream_routing_decisions_total", reason="weight") == counted
    assert state.rank(txn, peers)[0].reason == "priority 1; weight 70 of 100 (draw 0.24)"
    state.recorded(ranked, "gw_a")
    assert metric(state, "paystream_routing_decisions_total", reason="weight") == counted + 1


class FailingStore:
    """A store whose database is down."""

    def __init__(self) -> None:
        self.reads = 0

    @asynccontextmanager
    async def unit(self, tenant_id: uuid.UUID | None) -> AsyncIterator[PaymentUnit]:
        self.reads += 1
        raise ConnectionError("database down")
        yield  # pragma: no cover


async def test_a_failed_read_keeps_the_last_stats_and_is_logged_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    state = routed(env)
    env.gateway("gw_a", ok)
    await deposit(env)
    await state.refresh(env.store)
    known = state.health("DE", "deposit")
    assert known["gw_a"].succeeded == 1
    down = FailingStore()
    with caplog.at_level(logging.WARNING, logger="paystream_gateway_worker.routing_state"):
        await state.refresh(down)
        await state.refresh(down)
    assert down.reads == 2
    assert state.health("DE", "deposit") == known
    assert len([r for r in caplog.records if "health read failed" in r.message]) == 1


class CountingStore:
    def __init__(self, inner: FakeStore) -> None:
        self.inner = inner
        self.reads = 0
        self.release = asyncio.Event()

    @asynccontextmanager
    async def unit(self, tenant_id: uuid.UUID | None) -> AsyncIterator[PaymentUnit]:
        self.reads += 1
        await self.release.wait()
        async with self.inner.unit(tenant_id) as unit:
            yield unit


async def test_stats_are_read_in_the_background_at_most_every_interval(env: Env) -> None:
    state = routed(env, routing_health_refresh_s=3600)
    store = CountingStore(env.store)
    state.refresh_soon(store)
    state.refresh_soon(store)
    # Routing goes on while the read waits (a database that is slow to answer).
    env.gateway("gw_a", ok)
    assert first_attempt(env, await deposit(env)) == ("gw_a", "priority 1")
    store.release.set()
    await state.close()
    state.refresh_soon(store)
    assert store.reads == 1, "one read per interval"


async def test_close_cancels_a_read_under_way(env: Env) -> None:
    state = routed(env, routing_health_refresh_s=0.001)
    store = CountingStore(env.store)
    state.refresh_soon(store)
    await asyncio.sleep(0)  # the task starts and waits for the release
    await state.close()
    assert store.reads == 1
    assert state.health("DE", "deposit") == {}
