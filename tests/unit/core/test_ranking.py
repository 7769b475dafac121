"""The order candidates are tried in, by health and weight, and why (paystream_core.ranking)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import pytest

from paystream_core.ranking import (
    GOLDEN,
    Decision,
    HealthPolicy,
    Ranked,
    WindowStats,
    next_draw,
    rank,
)
from paystream_core.routing import Candidate

POLICY = HealthPolicy(success_floor=0.5, window_s=300, min_volume=50)
HEALTHY = WindowStats(final=100, succeeded=95)
SICK = WindowStats(final=52, succeeded=20)  # 38%


def cand(gateway: str, priority: int, weight: int = 100) -> Candidate:
    return Candidate(gateway, f"p-{gateway}", uuid.uuid4(), priority, weight)


def order(
    candidates: Sequence[Candidate],
    health: Mapping[str, WindowStats] | None = None,
    draw: float | None = 0.0,
    policy: HealthPolicy = POLICY,
) -> list[Ranked]:
    return rank(candidates, health or {}, policy, draw)


def names(ranked: Sequence[Ranked]) -> list[str]:
    return [r.gateway for r in ranked]


def test_without_stats_or_weights_the_priority_order_stands() -> None:
    ranked = order([cand("a", 1), cand("b", 2), cand("c", 3)])
    assert names(ranked) == ["a", "b", "c"]
    assert [r.reason for r in ranked] == ["priority 1", "priority 2", "priority 3"]
    assert {r.decision for r in ranked} == {Decision.PRIORITY}
    assert not any(r.demoted or r.drawn for r in ranked)


def test_nothing_to_rank() -> None:
    assert order([]) == []


def test_a_gateway_below_the_floor_is_demoted_behind_every_other_one() -> None:
    ranked = order(
        [cand("a", 1), cand("b", 2), cand("c", 3)], {"a": SICK, "b": HEALTHY, "c": HEALTHY}
    )
    assert names(ranked) == ["b", "c", "a"]
    assert ranked[2].demoted
    assert ranked[2].stats == SICK
    assert ranked[2].reason == "demoted: 38% of 52 succeeded in 300s < floor 50%; priority 1"
    assert ranked[2].decision == Decision.DEMOTED
    assert ranked[0].reason == "priority 2; ahead of demoted a"
    assert ranked[0].decision == Decision.DEMOTED
    assert ranked[1].reason == "priority 3; ahead of demoted a"


def test_demoted_ones_keep_their_relative_order_and_so_do_the_others() -> None:
    health = {"a": SICK, "b": SICK}
    ranked = order([cand("a", 1), cand("b", 2), cand("c", 3), cand("d", 4)], health)
    assert names(ranked) == ["c", "d", "a", "b"]
    assert [r.demoted for r in ranked] == [False, False, True, True]
    assert ranked[0].reason == "priority 3; ahead of demoted a, b"


def test_a_gateway_behind_a_demoted_one_only_says_so_if_it_passed_it() -> None:
    ranked = order([cand("a", 1), cand("b", 2), cand("c", 3)], {"c": SICK})
    assert names(ranked) == ["a", "b", "c"]
    assert [r.reason.split(";")[0] for r in ranked] == [
        "priority 1",
        "priority 2",
        "demoted: 38% of 52 succeeded in 300s < floor 50%",
    ]
    assert [r.decision for r in ranked[:2]] == [Decision.PRIORITY, Decision.PRIORITY]


def test_below_the_minimum_volume_nothing_is_judged() -> None:
    few = WindowStats(final=49, succeeded=0)
    ranked = order([cand("a", 1), cand("b", 2)], {"a": few})
    assert names(ranked) == ["a", "b"]
    assert not ranked[0].demoted


def test_exactly_at_the_floor_is_not_below_it() -> None:
    ranked = order([cand("a", 1), cand("b", 2)], {"a": WindowStats(final=50, succeeded=25)})
    assert names(ranked) == ["a", "b"]
    ranked = order([cand("a", 1), cand("b", 2)], {"a": WindowStats(final=50, succeeded=24)})
    assert names(ranked) == ["b", "a"]


def test_promoted_back_as_soon_as_its_window_is_no_longer_below_the_floor() -> None:
    candidates = [cand("a", 1), cand("b", 2)]
    assert names(order(candidates, {"a": SICK})) == ["b", "a"]
    # Its bad attempts aged out of the window: too few left to judge, or good ones.
    assert names(order(candidates, {"a": WindowStats(final=10, succeeded=2)})) == ["a", "b"]
    assert names(order(candidates, {"a": WindowStats(final=60, succeeded=45)})) == ["a", "b"]


def test_when_every_candidate_is_below_the_floor_nothing_moves() -> None:
    ranked = order([cand("a", 1), cand("b", 2)], {"a": SICK, "b": SICK})
    assert names(ranked) == ["a", "b"]
    assert not any(r.demoted for r in ranked)
    assert ranked[0].reason == "priority 1; every candidate below floor: none demoted"
    assert ranked[0].decision == Decision.PRIORITY


def test_the_floor_and_window_come_from_the_policy() -> None:
    strict = HealthPolicy(success_floor=0.975, window_s=60.5, min_volume=10)
    ranked = order([cand("a", 1), cand("b", 2)], {"a": HEALTHY}, policy=strict)
    assert names(ranked) == ["b", "a"]
    assert ranked[1].reason.startswith("demoted: 95% of 100 succeeded in 60.5s < floor 97.5%;")


def test_equal_priorities_split_by_a_weighted_draw() -> None:
    level = [cand("a", 1, 70), cand("b", 1, 30), cand("c", 2)]
    low = order(level, draw=0.42)
    assert names(low) == ["a", "b", "c"]
    assert low[0].reason == "priority 1; weight 70 of 100 (draw 0.42)"
    assert low[1].reason == "priority 1; weight 30 of 100 (not drawn)"
    assert (low[0].drawn, low[1].drawn, low[2].drawn) == (True, False, False)
    assert (low[0].share, low[1].share) == (0.7, 0.3)
    assert [r.decision for r in low] == [Decision.WEIGHT, Decision.WEIGHT, Decision.PRIORITY]
    high = order(level, draw=0.7)  # the slices: a [0, 70), b [70, 100)
    assert names(high) == ["b", "a", "c"]
    assert high[0].reason == "priority 1; weight 30 of 100 (draw 0.70)"
    assert names(order(level, draw=0.6999)) == ["a", "b", "c"]
    assert names(order(level, draw=0.9999999999)) == ["b", "a", "c"]


def test_after_the_drawn_one_the_heaviest_then_the_configured_order() -> None:
    level = [cand("a", 1, 10), cand("b", 1, 20), cand("c", 1, 50), cand("d", 1, 20)]
    # a [0, 10), b [10, 30), c [30, 80), d [80, 100)
    assert names(order(level, draw=0.05)) == ["a", "c", "b", "d"]
    assert names(order(level, draw=0.85)) == ["d", "c", "b", "a"]
    assert names(order(level, draw=0.5)) == ["c", "b", "d", "a"]


def test_weights_split_volume_over_a_golden_ratio_sequence() -> None:
    level = [cand("a", 1, 70), cand("b", 1, 30)]
    draw, firsts = 0.0, []
    for _ in range(1000):
        firsts.append(order(level, draw=draw)[0].gateway)
        draw = next_draw(draw)
    # Low discrepancy: within a few payments of 700, where random draws would wander by
    # +-43 (3 sigma).
    assert abs(firsts.count("a") - 700) <= 3
    # And over any short run too.
    assert abs(firsts[:100].count("a") - 70) <= 2


def test_a_single_gateway_at_its_priority_is_not_drawn() -> None:
    ranked = order([cand("a", 1, 70), cand("b", 2, 30)], draw=0.9)
    assert names(ranked) == ["a", "b"]
    assert ranked[0].reason == "priority 1"
    assert not ranked[0].drawn
    assert ranked[0].share == 1.0


def test_demotion_comes_before_weights() -> None:
    level = [cand("a", 1, 70), cand("b", 1, 30), cand("c", 2)]
    ranked = order(level, {"a": SICK}, draw=0.1)
    assert names(ranked) == ["b", "c", "a"]
    assert ranked[0].reason == "priority 1; ahead of demoted a"
    assert ranked[0].decision == Decision.DEMOTED
    assert ranked[1].reason == "priority 2; ahead of demoted a"


def test_demoted_peers_of_equal_priority_still_split_by_weight_among_themselves() -> None:
    level = [cand("a", 1, 70), cand("b", 1, 30), cand("c", 2)]
    ranked = order(level, {"a": SICK, "b": SICK}, draw=0.8)
    assert names(ranked) == ["c", "b", "a"]
    assert ranked[1].reason == (
        "demoted: 38% of 52 succeeded in 300s < floor 50%; priority 1; weight 30 of 100 (draw 0.80)"
    )


@pytest.mark.parametrize("draw", [-0.1, 1.0, 1.5])
def test_the_draw_is_in_the_unit_interval(draw: float) -> None:
    with pytest.raises(ValueError, match="draw"):
        order([cand("a", 1)], draw=draw)


def test_the_sequence_stays_in_the_unit_interval() -> None:
    draw = 0.0
    for _ in range(10_000):
        draw = next_draw(draw)
        assert 0.0 <= draw < 1.0
    assert next_draw(0.0) == GOLDEN


def test_success_rate_of_an_empty_window() -> None:
    assert WindowStats(0, 0).success_rate == 1.0
    assert not POLICY.below_floor(WindowStats(0, 0))
    assert not POLICY.below_floor(None)


def test_without_a_draw_equal_priorities_are_explained_by_their_share() -> None:
    level = [cand("a", 1, 30), cand("b", 1, 70), cand("c", 1, 70), cand("d", 2)]
    ranked = order(level, draw=None)
    assert names(ranked) == ["b", "c", "a", "d"]
    assert [r.reason for r in ranked] == [
        "priority 1; weight 70 of 170 (share 41%)",
        "priority 1; weight 70 of 170 (share 41%)",
        "priority 1; weight 30 of 170 (share 18%)",
        "priority 2",
    ]
    assert not any(r.drawn for r in ranked)
    assert ranked[0].decision == Decision.WEIGHT
