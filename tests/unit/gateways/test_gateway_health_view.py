"""The pure rule every worker's view applies to the gateway-health records, in log order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from paystream_messaging.gateway_health import (
    SCHEMA_FILE,
    BadHealthRecord,
    HealthRecord,
    Lease,
    apply,
    claim_granted,
    decode,
    encode,
    same_breaker,
    to_json,
)

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "schemas" / SCHEMA_FILE).read_text())
GW = "stripe"


def rec(event: str, by: str = "w1", at: float = 100.0, **fields: Any) -> HealthRecord:
    return HealthRecord(gateway=GW, event=event, by=by, at=at, **fields)  # type: ignore[arg-type]


def opened(at: float = 100.0, until: float = 110.0, by: str = "w1") -> HealthRecord:
    return rec(
        "open", by=by, at=at, state="open", failures=5, opened_at=at, open_until=until,
        reason="5 consecutive failures: connection refused",
    )  # fmt: skip


def claim(by: str, at: float, until: float) -> HealthRecord:
    return rec("claim", by=by, at=at, state="half_open", lease=Lease(by, until))


def run(*records: HealthRecord) -> HealthRecord:
    view: dict[str, HealthRecord] = {}
    for record in records:
        view = apply(view, record)
    return view[GW]


def test_failures_count_and_a_success_resets_them() -> None:
    after = run(rec("reset"), rec("failure", failures=1), rec("failure", by="w2", failures=2))
    assert (after.state, after.failures, after.by) == ("closed", 2, "w2")
    assert run(rec("reset"), rec("failure", failures=3), rec("reset")).failures == 0


def test_apply_leaves_the_given_view_alone() -> None:
    view = {GW: rec("reset")}
    apply(view, rec("failure", failures=1))
    assert view[GW].failures == 0


def test_open_is_seen_with_its_period_and_reason() -> None:
    after = run(rec("reset"), opened())
    assert (after.state, after.open_until, after.failures) == ("open", 110.0, 5)
    assert after.reason == "5 consecutive failures: connection refused"


def test_a_late_failure_or_success_does_not_touch_an_open_breaker() -> None:
    """Published from a view that had not seen the open yet: the log's order wins."""
    after = run(rec("reset"), opened(), rec("failure", by="w2", failures=2), rec("reset", by="w3"))
    assert (after.state, after.failures, after.by) == ("open", 5, "w1")


def test_first_claim_after_the_open_period_is_granted_the_second_denied() -> None:
    first, second = claim("w1", 111.0, 131.0), claim("w2", 111.1, 131.1)
    after = run(rec("reset"), opened(), first, second)
    assert after.state == "half_open"
    assert after.lease == Lease("w1", 131.0)
    view = {GW: run(rec("reset"), opened(), first)}
    assert not claim_granted(view[GW], second)


def test_a_claim_before_the_open_period_ends_is_denied() -> None:
    after = run(rec("reset"), opened(until=110.0), claim("w1", 109.0, 130.0))
    assert (after.state, after.lease) == ("open", None)


def test_an_expired_lease_can_be_claimed_by_another_worker() -> None:
    """Its holder died mid-probe: the lease runs out and someone else probes."""
    after = run(rec("reset"), opened(), claim("w1", 111.0, 120.0), claim("w2", 120.5, 140.0))
    assert after.lease == Lease("w2", 140.0)


def test_probe_success_closes_and_releases_the_lease() -> None:
    after = run(rec("reset"), opened(), claim("w1", 111.0, 131.0), rec("close", at=112.0))
    assert (after.state, after.failures, after.lease, after.open_until) == ("closed", 0, None, None)
    # and nobody needs to probe a closed breaker
    assert not claim_granted(after, claim("w2", 113.0, 133.0))


def test_probe_failure_reopens_with_a_new_period_and_releases_its_lease() -> None:
    probe_failed = opened(at=112.0, until=122.0)
    after = run(rec("reset"), opened(), claim("w1", 111.0, 131.0), probe_failed)
    assert (after.state, after.open_until, after.lease) == ("open", 122.0, None)
    assert not claim_granted(after, claim("w2", 115.0, 135.0)), "new period not over"
    assert claim_granted(after, claim("w2", 122.5, 142.5))


def test_an_open_from_a_worker_that_missed_the_lease_keeps_the_holders_lease() -> None:
    stale = opened(at=111.5, until=121.5, by="w2")
    after = run(rec("reset"), opened(), claim("w1", 111.0, 131.0), stale)
    assert after.lease == Lease("w1", 131.0)


def test_operator_down_and_up_keep_the_breaker_and_breaker_events_keep_the_operator() -> None:
    down = rec("operator", by="cli:alice@host", operator="down", reason="gateways down")
    after = run(rec("reset"), opened(), down)
    assert (after.state, after.operator, after.open_until) == ("open", "down", 110.0)
    # a worker's record carries whatever operator its view had; only the operator sets it
    after = run(rec("reset"), down, rec("failure", failures=1, operator=None))
    assert (after.operator, after.failures) == ("down", 1)
    assert run(rec("reset"), down, rec("operator", operator="up")).operator == "up"


def test_the_first_record_of_a_gateway_is_taken_whole() -> None:
    """What a view reads first after compaction: the last snapshot of that gateway."""
    snapshot = claim("w1", 111.0, 131.0)
    assert run(snapshot) == snapshot


@pytest.mark.parametrize(
    "record",
    [
        rec("reset"),
        opened(),
        claim("w1", 111.0, 131.0),
        rec("operator", operator="down", by="cli:alice@host"),
        rec("restate", by="w2", state="half_open", lease=Lease("w1", 131.0)),
    ],
)
def test_records_round_trip_and_match_the_published_schema(record: HealthRecord) -> None:
    data = json.loads(encode(record))
    jsonschema.validate(data, SCHEMA)
    assert decode(encode(record)) == record
    assert to_json(record) == data


def test_the_schema_examples_decode() -> None:
    for example in SCHEMA["examples"]:
        jsonschema.validate(example, SCHEMA)
        assert to_json(decode(json.dumps(example).encode())) == example


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"not json",
        b"[]",
        json.dumps({**to_json(opened()), "state": "ajar"}).encode(),
        json.dumps({**to_json(opened()), "failures": -1}).encode(),
        json.dumps({**to_json(opened()), "at": "yesterday"}).encode(),
        json.dumps({**to_json(opened()), "lease": {"holder": "w1"}}).encode(),
    ],
)
def test_what_is_not_a_record_is_refused(value: bytes | None) -> None:
    with pytest.raises(BadHealthRecord):
        decode(value)


def test_unknown_fields_are_ignored_for_newer_publishers() -> None:
    data = {**to_json(opened()), "window": 30}
    jsonschema.validate(data, SCHEMA)  # the schema allows them too
    assert decode(json.dumps(data).encode()) == opened()
    assert dataclasses.asdict(opened())["state"] == "open"


def test_a_restate_changes_nothing_for_a_view_that_read_the_log_and_is_taken_whole_first() -> None:
    before = run(rec("reset"), opened(), claim("w1", 111.0, 131.0))
    restate = dataclasses.replace(before, event="restate", by="w2", at=112.0, reason="restated")
    assert run(rec("reset"), opened(), claim("w1", 111.0, 131.0), restate) == before
    assert same_breaker(run(restate), before), "after compaction: the same breaker"
    assert not same_breaker(claim("w2", 111.1, 131.1), before), "a denied claim is not"
