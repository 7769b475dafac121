"""The order in which a transaction's candidate gateways are tried, and why (issue 14).

`paystream_core.routing.candidates` gives the gateways that may take a transaction, by
configured priority. `rank` keeps that order except for two things:

- Health. A gateway whose recent success rate for the country and type is below the floor
  (over the window, once it has at least `min_volume` final attempts there) is demoted
  behind every candidate that is not, the relative order of each group kept. If every
  candidate is below the floor, nothing moves: demoting them all would only reshuffle them.
  A demoted gateway still takes what its peers cannot (fallback goes down the whole list),
  and it is promoted back as soon as it is no longer below the floor: its bad attempts age
  out of the window, so as traffic reaches it again it is measured again.
- Weights. Among candidates of equal priority (and equal demotion), the first is chosen by
  a weighted draw (`draw` in [0, 1), from the caller's low-discrepancy sequence, so a
  70/30 split is 70/30 over a few hundred payments, not only on average); the others
  follow by weight, heaviest first, then in their configured order.

Only final attempts count towards health: `succeeded` and `declined` (a decline is the
gateway's answer; one that did not execute at all is the circuit breaker's business, and
`pending` or `action_required` have no verdict yet).

Every ranked candidate carries a short, stable reason, recorded on the attempt made there:
"priority 1", "priority 1; weight 70 of 100 (draw 0.42)",
"demoted: 38% of 52 succeeded in 300s < floor 50%; priority 1",
"priority 2; ahead of demoted jsonpay".
Nothing here changes which gateways may be tried, nor any fallback rule: ranking only
reorders candidates that are all eligible anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from paystream_core.routing import Candidate

# The fractional part of the golden ratio: x -> (x + GOLDEN) % 1 visits [0, 1) more evenly
# than random draws (an additive recurrence of low discrepancy), so the weights hold over
# short runs too.
GOLDEN = 0.6180339887498949


def next_draw(draw: float) -> float:
    """The draw after `draw` in a golden-ratio additive recurrence."""
    return (draw + GOLDEN) % 1.0


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Final attempts of one gateway for one country and type in the health window."""

    final: int
    succeeded: int

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.final if self.final else 1.0


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    success_floor: float  # 0..1: below it (with enough volume) a gateway is demoted
    window_s: float  # how far back the stats reach (for the reason text)
    min_volume: int  # final attempts needed before the rate means anything

    def below_floor(self, stats: WindowStats | None) -> bool:
        return (
            stats is not None
            and stats.final >= self.min_volume
            and stats.succeeded < self.success_floor * stats.final
        )


class Decision(StrEnum):
    """What put a candidate where it is (the metric's label)."""

    PRIORITY = "priority"  # the configured order
    WEIGHT = "weight"  # a weighted draw among equal priorities
    DEMOTED = "demoted"  # a demotion moved it (it, or one configured ahead of it)


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    reason: str
    decision: Decision
    demoted: bool = False
    drawn: bool = False  # chosen by the draw among its equal-priority peers
    share: float = 1.0  # its weight's share among its equal-priority peers
    stats: WindowStats | None = None

    @property
    def gateway(self) -> str:
        return self.candidate.gateway


def rank(
    candidates: Sequence[Candidate],
    health: Mapping[str, WindowStats],
    policy: HealthPolicy,
    draw: float | None,
) -> list[Ranked]:
    """`candidates` (in priority order) in the order to try them, each with its reason.
    `health`: the window's stats per gateway for the transaction's country and type.
    `draw` None (an explanation, not a payment): equal priorities are listed heaviest
    first, each with its share of first attempts instead of a draw."""
    if draw is not None and not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), not {draw}")
    below = [c for c in candidates if policy.below_floor(health.get(c.gateway))]
    everyone = bool(candidates) and len(below) == len(candidates)
    demoted = set() if everyone else {c.gateway for c in below}
    kept = [c for c in candidates if c.gateway not in demoted]
    moved = [c for c in candidates if c.gateway in demoted]
    out: list[Ranked] = []
    for group in (kept, moved):
        for level in _levels(group):
            out += _rank_level(level, candidates, health, policy, draw, demoted, everyone)
    return out


def _levels(group: Sequence[Candidate]) -> list[list[Candidate]]:
    """Runs of equal priority (the input is in priority order)."""
    levels: list[list[Candidate]] = []
    for c in group:
        if levels and levels[-1][0].priority == c.priority:
            levels[-1].append(c)
        else:
            levels.append([c])
    return levels


def _rank_level(
    level: Sequence[Candidate],
    everyone: Sequence[Candidate],
    health: Mapping[str, WindowStats],
    policy: HealthPolicy,
    draw: float | None,
    demoted: set[str],
    all_below: bool,
) -> list[Ranked]:
    total = sum(c.weight for c in level)
    if len(level) > 1:
        if draw is None:
            chosen = min(level, key=lambda c: (-c.weight, level.index(c)))
        else:
            chosen = _weighted(level, draw * total)
        rest = sorted(
            (c for c in level if c is not chosen),
            key=lambda c: (-c.weight, level.index(c)),
        )
        ordered = [chosen, *rest]
    else:
        chosen, ordered = level[0], list(level)
    ranked = []
    for c in ordered:
        stats = health.get(c.gateway)
        parts = [f"priority {c.priority}"]
        decision = Decision.PRIORITY
        if len(level) > 1:
            if draw is None:
                how = f"(share {c.weight / total * 100:.0f}%)"
            else:
                how = f"(draw {draw:.2f})" if c is chosen else "(not drawn)"
            parts.append(f"weight {c.weight} of {total} {how}")
            decision = Decision.WEIGHT
        passed = [
            o.gateway
            for o in everyone
            if o.gateway in demoted and o.priority <= c.priority and c.gateway not in demoted
        ]
        if passed:
            parts.append(f"ahead of demoted {', '.join(passed)}")
            decision = Decision.DEMOTED
        if all_below and stats is not None and policy.below_floor(stats):
            parts.append("every candidate below floor: none demoted")
        if c.gateway in demoted:
            assert stats is not None  # demoted only on its stats
            parts.insert(0, f"demoted: {_health(stats, policy)}")
            decision = Decision.DEMOTED
        ranked.append(
            Ranked(
                candidate=c,
                reason="; ".join(parts),
                decision=decision,
                demoted=c.gateway in demoted,
                drawn=draw is not None and len(level) > 1 and c is chosen,
                share=c.weight / total,
                stats=stats,
            )
        )
    return ranked


def _weighted(level: Sequence[Candidate], point: float) -> Candidate:
    """The candidate whose slice of [0, total) holds `point` (slices in configured order)."""
    upto = 0
    for c in level:
        upto += c.weight
        if point < upto:
            return c
    return level[-1]  # point == total only through float rounding


def _health(stats: WindowStats, policy: HealthPolicy) -> str:
    return (
        f"{stats.success_rate * 100:.0f}% of {stats.final} succeeded in {policy.window_s:g}s"
        f" < floor {policy.success_floor * 100:g}%"
    )
