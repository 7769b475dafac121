"""Gateway health records (`<prefix>.gateway-health`) and the pure rule that folds them
into a view.

The topic has one partition and is compacted; the key is the gateway code and every value is
a self-contained JSON record (schema: `schemas/paystream.gateway-health.json`) carrying the
whole state of one gateway's breaker as its publisher computed it, plus the `event` that
made it. Every worker keeps a view by applying the records in offset order with `apply`, so
all views that read the same log agree: that is what makes the half-open probe lease work
(a claim is granted or denied by where it landed in the log, identically everywhere).

Records are snapshots, but `apply` takes from each only what its event may change: a
worker publishing from a view a few records behind must not undo what it has not seen yet
(a stale failure count does not close an open breaker; only a lease's holder changes the
lease; only the operator command changes `operator`).

Compaction keeps only the last record of each key, and a view that starts after it takes
that record whole. A record `apply` ignored or took only part of (a late failure, a denied
claim) would then stand for the whole state: so its publisher, seeing its own record come
back different from the entry it produced, publishes a `restate` (the entry as its view has
it), which views that read the log before it ignore.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

State = Literal["closed", "open", "half_open"]
# failure: one more consecutive failure counted while closed; reset: a success brought the
# count back to 0; open: tripped (or a probe failed); close: a probe succeeded; claim: a
# worker asks for the half-open probe lease; operator: `paystream gateways down|up`;
# restate: the whole entry again, for views that start from it after compaction.
Event = Literal["failure", "reset", "open", "close", "claim", "operator", "restate"]
Operator = Literal["down", "up"]

STATES: Final[tuple[str, ...]] = get_args(State)
EVENTS: Final[tuple[str, ...]] = get_args(Event)
OPERATORS: Final[tuple[str, ...]] = get_args(Operator)
SCHEMA_FILE: Final = "paystream.gateway-health.json"
_MAX_TEXT: Final = 500  # a reason or worker id longer than this is cut, not refused


class BadHealthRecord(ValueError):
    """A value on the health topic that is not a health record (it is skipped)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to send the one half-open probe, until `until` (epoch s)."""

    holder: str
    until: float


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """One record of the topic, and one entry of a view (the state after the last change,
    with who made that change, when and why)."""

    gateway: str
    event: Event
    state: State = "closed"
    failures: int = 0  # consecutive failures, counted across workers
    opened_at: float | None = None  # epoch s
    open_until: float | None = None  # epoch s: no call before, then one probe under a lease
    lease: Lease | None = None
    operator: Operator | None = None
    by: str = ""  # worker id host:pid:random, or the operator command's
    at: float = 0.0  # epoch s, the publisher's clock
    reason: str = ""

    def lease_held(self, now: float) -> Lease | None:
        """The lease if someone holds it at `now`."""
        return self.lease if self.lease is not None and self.lease.until > now else None


HealthView = Mapping[str, HealthRecord]


def closed(gateway: str) -> HealthRecord:
    """A gateway nobody published anything about: closed, no failures."""
    return HealthRecord(gateway=gateway, event="reset")


def apply(view: HealthView, record: HealthRecord) -> dict[str, HealthRecord]:
    """The view after `record` (the view itself is not changed)."""
    current = view.get(record.gateway)
    after = merge(current, record)
    if after is current:
        return dict(view)
    return {**view, record.gateway: after}


def merge(current: HealthRecord | None, record: HealthRecord) -> HealthRecord:
    """One gateway's entry after `record`; `current` itself when the record changes nothing
    (a late or denied one)."""
    if current is None:
        # The first record a view sees for a gateway is taken whole: on a fresh topic it was
        # computed from the empty state anyway, and after compaction removed the records
        # before it, the snapshot is the best there is. (A denied claim kept as the last
        # record would then read as granted in a view started later: that view only waits
        # out a lease it could otherwise have claimed, the safe direction.)
        return record
    match record.event:
        case "restate":
            return current  # it says nothing a view that read the log before it lacks
        case "operator":
            return _changed(current, record, operator=record.operator)
        case "failure":
            if current.state != "closed":
                return current  # a call that started before the breaker opened
            # Last writer wins: two workers failing at once from the same view both publish
            # view + 1 and one increment is lost. The breaker then opens a failure later,
            # which is acceptable; a compare-and-set would cost a round trip per failure.
            return _changed(current, record, failures=record.failures)
        case "reset":
            if current.state != "closed" or current.failures == 0:
                return current  # a success never closes an open breaker: only a probe does
            return _changed(current, record, failures=0)
        case "open":
            # A probe failure releases its holder's lease; an open published by a worker
            # that had not seen someone else's lease leaves that lease alone.
            lease = current.lease
            if lease is not None and lease.holder == record.by:
                lease = None
            return _changed(
                current,
                record,
                state="open",
                failures=record.failures,
                opened_at=record.opened_at,
                open_until=record.open_until,
                lease=lease,
            )
        case "close":
            return _changed(
                current,
                record,
                state="closed",
                failures=0,
                opened_at=None,
                open_until=None,
                lease=None,
            )
        case "claim":
            if not claim_granted(current, record):
                return current
            return _changed(current, record, state="half_open", lease=record.lease)
    raise AssertionError(f"unknown event {record.event!r}")  # pragma: no cover


def same_breaker(record: HealthRecord, entry: HealthRecord) -> bool:
    """Whether `record`, read whole (as a view starting after compaction reads it), gives
    the breaker state `entry` has: the same state, count, period, lease and operator."""
    return _breaker_fields(record) == _breaker_fields(entry)


def _breaker_fields(r: HealthRecord) -> tuple[Any, ...]:
    return (r.state, r.failures, r.opened_at, r.open_until, r.lease, r.operator)


def _changed(current: HealthRecord, record: HealthRecord, **changes: Any) -> HealthRecord:
    """`current` with `changes`, stamped with who made them, when and why."""
    return dataclasses.replace(
        current, event=record.event, by=record.by, at=record.at, reason=record.reason, **changes
    )


def claim_granted(current: HealthRecord | None, record: HealthRecord) -> bool:
    """Whether claim `record`, at its place in the log after `current`, gets the lease: the
    breaker is open (or half-open) and its open period is over at the claim's time, and no
    other holder has a lease that is unexpired at that time (a dead holder's lease expires)."""
    if record.event != "claim" or record.lease is None or record.lease.holder != record.by:
        return False
    if current is None:
        return True
    if current.state == "closed":
        return False  # closed meanwhile: nothing to probe, calls go through anyway
    if current.open_until is not None and record.at < current.open_until:
        return False  # opened again (a failed probe) after the claimer looked
    held = current.lease_held(record.at)
    return held is None or held.holder == record.by


# --- JSON --------------------------------------------------------------------------------------


def to_json(record: HealthRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["reason"] = record.reason[:_MAX_TEXT]
    return data


def encode(record: HealthRecord) -> bytes:
    return json.dumps(to_json(record), separators=(",", ":")).encode()


def decode(value: bytes | None) -> HealthRecord:
    """A record from the topic; BadHealthRecord for anything else. Unknown fields are
    ignored (the schema allows them), so a newer publisher can add one without breaking
    older readers."""
    if value is None:
        raise BadHealthRecord("no value (a tombstone)")
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise BadHealthRecord(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadHealthRecord("not a JSON object")
    return from_json(data)


def from_json(data: Mapping[str, Any]) -> HealthRecord:
    gateway = _text(data, "gateway")
    if not gateway:
        raise BadHealthRecord("gateway is empty")
    event = _choice(data, "event", EVENTS)
    state = _choice(data, "state", STATES)
    operator = data.get("operator")
    if operator is not None and operator not in OPERATORS:
        raise BadHealthRecord(f"operator {operator!r} is not one of {OPERATORS}")
    failures = data.get("failures")
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
        raise BadHealthRecord("failures must be a non-negative integer")
    lease = data.get("lease")
    if lease is not None:
        if not isinstance(lease, dict):
            raise BadHealthRecord("lease must be an object or null")
        lease = Lease(holder=_text(lease, "holder"), until=_epoch(lease, "until"))
    return HealthRecord(
        gateway=gateway,
        event=event,  # type: ignore[arg-type]  # checked by _choice
        state=state,  # type: ignore[arg-type]
        failures=failures,
        opened_at=_epoch(data, "opened_at", nullable=True),
        open_until=_epoch(data, "open_until", nullable=True),
        lease=lease,
        operator=operator,
        by=_text(data, "by"),
        at=_epoch(data, "at"),
        reason=_text(data, "reason"),
    )


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise BadHealthRecord(f"{name} must be a string")
    return value[:_MAX_TEXT]


def _choice(data: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = data.get(name)
    if value not in allowed:
        raise BadHealthRecord(f"{name} {value!r} is not one of {allowed}")
    return str(value)


def _epoch(data: Mapping[str, Any], name: str, *, nullable: bool = False) -> Any:
    value = data.get(name)
    if value is None and nullable:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise BadHealthRecord(f"{name} must be epoch seconds")
    return float(value)
