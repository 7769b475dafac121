"""What routing remembers in one worker process between commands: the gateways' recent
health, the weighted draws, and the routing metrics (`paystream_core.ranking` decides).

- Health: the stats of `paystream_route_health` (every worker's attempts, all tenants),
  re-read at most every `routing_health_refresh_s` in a background task. A routing decision
  never waits for the database: it ranks with the last stats read (none before the first
  read: the configured order). A failed read keeps the last stats and is logged once until
  a read succeeds again.
- Draws: one golden-ratio sequence per (country, type, currency) and process, advanced only
  when a draw chose the gateway of a new attempt, so the weights hold over short runs.
  Ranking and advancing happen with no await in between (`rank` then `chose`), so
  concurrent plans in one process never reuse a draw. A decision is counted once its
  attempt is stored (`recorded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from paystream_config import RoutingSettings
from paystream_core.ports import PaymentStore
from paystream_core.ranking import HealthPolicy, Ranked, WindowStats, next_draw, rank
from paystream_core.records import TransactionRecord
from paystream_core.routing import Candidate
from paystream_gateway_worker.settings import GatewayWorkerSettings

log = logging.getLogger(__name__)

# (gateway, country, type): the unit of health, as the database function groups it.
HealthKey = tuple[str, str, str]
# (country, type, candidates, draw or None): what a ranking depends on besides the stats.
_RankKey = tuple[str, str, tuple[Candidate, ...], float | None]
_MAX_RANKED = 4096  # distinct keys kept at once (amount limits make candidate lists vary)


def health_policy(settings: RoutingSettings) -> HealthPolicy:
    """The demotion rule's parameters, as workers and `paystream routes explain` use them."""
    return HealthPolicy(
        success_floor=settings.routing_success_floor,
        window_s=settings.routing_health_window_s,
        min_volume=settings.routing_min_volume,
    )


class RoutingState:
    """Per-process routing memory, built with the worker's deps."""

    def __init__(self, settings: GatewayWorkerSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.policy = health_policy(settings)
        # (country, type) -> gateway -> stats: one lookup per routing decision.
        self._health: dict[tuple[str, str], dict[str, WindowStats]] = {}
        self._read_at: float | None = None  # monotonic time of the last read started
        self._reading: asyncio.Task[None] | None = None
        self._failing = False
        self._draws: dict[tuple[str, str, str], float] = {}
        # `rank` is a pure function of the candidates, the health stats and the draw; the
        # same few candidate lists come back for every payment, so their rankings are kept
        # until the stats change (a fifth of the plan's CPU otherwise). Keyed on the draw
        # only when it matters: when two candidates share a priority.
        self._ranked: dict[_RankKey, list[Ranked]] = {}
        self._demoted: set[HealthKey] = set()
        self.decisions = Counter(
            "paystream_routing_decisions_total",
            "New attempts by what chose their gateway (priority, weight draw, demotion)",
            ["reason"],
            registry=registry,
        )
        self.demoted = Gauge(
            "paystream_routing_demoted",
            "1 while a gateway is demoted for a country and type (below the success floor)",
            ["gateway", "country", "type"],
            registry=registry,
        )
        self.demotions = Counter(
            "paystream_routing_demotions_total",
            "Times a gateway was demoted for a country and type",
            ["gateway", "country", "type"],
            registry=registry,
        )

    # --- health ---------------------------------------------------------------------------

    def refresh_soon(self, store: PaymentStore) -> None:
        """Start a background read of the stats if the last one is older than the refresh
        interval and none is under way; returns at once."""
        now = time.monotonic()
        if self._reading is not None and not self._reading.done():
            return
        if (
            self._read_at is not None
            and now - self._read_at < self.settings.routing_health_refresh_s
        ):
            return
        self._read_at = now
        self._reading = asyncio.get_running_loop().create_task(self.refresh(store))

    async def refresh(self, store: PaymentStore) -> None:
        """Read the stats now (the background task; tests call it directly)."""
        try:
            async with store.unit(None) as unit:
                stats = await unit.route_health(self.settings.routing_health_window_s)
        except Exception as exc:  # a database outage: rank with the last stats read
            if not self._failing:
                log.warning("routing health read failed, keeping the last stats: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("routing health read again")
        self._failing = False
        health: dict[tuple[str, str], dict[str, WindowStats]] = {}
        for (gateway, country, kind), window in stats.items():
            health.setdefault((country, kind), {})[gateway] = window
        self._health = health
        self._ranked = {}
        # A gateway no longer below the floor is not demoted anywhere; the others are
        # judged again at their next ranking (demotion also depends on their peers).
        for key in list(self._demoted):
            gateway, country, kind = key
            if not self.policy.below_floor(health.get((country, kind), {}).get(gateway)):
                self._set_demoted(key, False)

    def health(self, country: str, kind: str) -> dict[str, WindowStats]:
        return self._health.get((country, kind), {})

    async def close(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    # --- decisions ------------------------------------------------------------------------

    def rank(self, txn: TransactionRecord, candidates: Sequence[Candidate]) -> list[Ranked]:
        """`candidates` in the order to try them, with the next draw of their sequence (not
        consumed: `chose` does, once it is known a draw picked the gateway)."""
        kind = txn.type.value
        draw = self._draws.get((txn.country, kind, txn.currency), 0.0)
        chosen = tuple(candidates)
        drawn = len({c.priority for c in chosen}) < len(chosen)
        key = (txn.country, kind, chosen, draw if drawn else None)
        ranked = self._ranked.get(key)
        if ranked is None:
            ranked = rank(chosen, self.health(txn.country, kind), self.policy, draw)
            if len(self._ranked) >= _MAX_RANKED:
                self._ranked = {}
            self._ranked[key] = ranked
        for r in ranked:
            self._set_demoted((r.gateway, txn.country, kind), r.demoted)
        return list(ranked)  # the cached list stays as ranked

    def chose(
        self,
        txn: TransactionRecord,
        ranked: Sequence[Ranked],
        gateway: str,
        *,
        count: bool = True,
    ) -> str:
        """A new attempt goes to `gateway` (of `ranked`): consume the draw if it chose, and
        return the reason to record on the attempt. `count=False`: the caller counts the
        decision with `recorded` once the attempt is stored (an attempt a racing worker
        recorded first was no decision of ours).

        The draw is consumed here, before the attempt is stored, on purpose: between `rank`
        and `chose` there is no await, so concurrent plans in this process never rank with
        the same draw. An attempt then lost to a racing worker skips one value of the
        sequence, which moves the split by at most one payment."""
        [picked] = [r for r in ranked if r.gateway == gateway]
        if picked.drawn:
            key = (txn.country, txn.type.value, txn.currency)
            self._draws[key] = next_draw(self._draws.get(key, 0.0))
        if count:
            self.recorded(ranked, gateway)
        return picked.reason

    def recorded(self, ranked: Sequence[Ranked], gateway: str) -> None:
        """The attempt `chose` gave `gateway` is stored: count its decision."""
        [picked] = [r for r in ranked if r.gateway == gateway]
        self.decisions.labels(picked.decision.value).inc()

    def _set_demoted(self, key: HealthKey, demoted: bool) -> None:
        if demoted and key not in self._demoted:
            self._demoted.add(key)
            self.demotions.labels(*key).inc()
            self.demoted.labels(*key).set(1)
            log.warning(
                "gateway %s demoted for %s %ss: %s",
                key[0],
                key[1],
                key[2],
                self._why(key),
            )
        elif not demoted and key in self._demoted:
            self._demoted.discard(key)
            self.demoted.labels(*key).set(0)
            log.info("gateway %s promoted back for %s %ss", *key)

    def _why(self, key: HealthKey) -> str:
        stats = self.health(key[1], key[2]).get(key[0])
        if stats is None:
            return "no stats"
        return f"{stats.succeeded} of {stats.final} final attempts succeeded"
