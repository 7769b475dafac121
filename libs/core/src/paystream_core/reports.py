"""A provider's later word on an attempt (a callback, or the reconciler's status lookup),
and what it may do to the transaction.

Moves only go forward (`statuses.can_move`). What the state machine refuses is sorted into
"stale" (an older report arriving late: expected, ignored) and an anomaly (a report that
contradicts a final status, or says an attempt we gave up on executed): kept, counted and
alerted on, never applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from paystream_core.attempts import MAX_ERROR_MESSAGE, failure_code
from paystream_core.outcomes import (
    ActionRequired,
    Declined,
    NotFound,
    Outcome,
    Pending,
    StatusResult,
    Succeeded,
)
from paystream_core.ports import AttemptKey
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.statuses import (
    ABANDONED_ATTEMPT,
    OPEN_ATTEMPT,
    AttemptStatus,
    Status,
    TransactionType,
)
from paystream_core.transitions import Transition, transition


def match_attempts(
    keys: Collection[AttemptKey], attempts: Iterable[AttemptRecord]
) -> dict[AttemptKey, AttemptRecord]:
    """The attempt each report names: by our idempotency key when the provider echoed it,
    else by the provider's reference (its newest attempt); only within the reporting
    connection, so one connection's (verified) callback never moves another's payments."""
    candidates = sorted(attempts, key=lambda a: a.seq)
    by_key = {(a.connection_id, a.idempotency_key): a for a in candidates}
    newest = {
        (a.connection_id, a.provider_reference): a for a in candidates if a.provider_reference
    }
    found: dict[AttemptKey, AttemptRecord] = {}
    for key in keys:
        hit = by_key.get((key.connection_id, key.reference)) if key.reference else None
        if hit is None and key.provider_reference:
            hit = newest.get((key.connection_id, key.provider_reference))
        if hit is not None:
            found[key] = hit
    return found


def target_status(outcome: Outcome) -> Status:
    match outcome:
        case Succeeded():
            return Status.SUCCEEDED
        case Pending():
            return Status.PENDING
        case ActionRequired():
            return Status.ACTION_REQUIRED
        case Declined():
            return Status.FAILED
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


class Applied(StrEnum):
    MOVED = "moved"
    UNCHANGED = "unchanged"  # the transaction already is where the report says
    STALE = "stale"  # an older report arriving late
    ANOMALY = "anomaly"
    SUPERSEDED = "superseded"  # about an attempt we moved on from, and harmless


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str
    detail: str
    reported: str | None = None  # the status the provider reported


@dataclass(frozen=True, slots=True)
class Judgement:
    result: Applied
    attempt: AttemptRecord | None = None  # the attempt to save, when the report changed it
    transition: Transition | None = None
    anomaly: Anomaly | None = None


def judge(
    txn: TransactionRecord,
    attempt: AttemptRecord,
    latest_seq: int,
    outcome: Outcome,
    kind: TransactionType | None,
    *,
    at: datetime,
) -> Judgement:
    """What the report `outcome` about `attempt` does; `latest_seq` is the number of the
    transaction's newest attempt, `kind` what the provider says the payment is (None when
    unknown, as for lookups)."""
    target = target_status(outcome)

    def anomaly(name: str, detail: str) -> Judgement:
        return Judgement(Applied.ANOMALY, anomaly=Anomaly(name, detail, target.value))

    if kind is not None and kind != txn.type:
        return anomaly(
            "type_mismatch", f"provider reports a {kind.value} for a {txn.type} transaction"
        )
    if attempt.seq != latest_seq:
        # We moved on from this attempt (it proved not executed, or was declined). A report
        # that it did execute means money may move twice: a human must look.
        if attempt.status in ABANDONED_ATTEMPT and target != Status.FAILED:
            return anomaly(
                "superseded_attempt_executed",
                f"attempt {attempt.seq} at {attempt.gateway_code} was {attempt.status} and"
                f" superseded by attempt {latest_seq}, but the provider reports {target.value}",
            )
        return Judgement(Applied.SUPERSEDED)
    updated = record_on_attempt(attempt, outcome, at=at)
    changed = updated if updated != attempt else None
    if txn.status == target:
        return Judgement(Applied.UNCHANGED, changed)
    failure = (
        (failure_code(outcome.code), outcome.message) if isinstance(outcome, Declined) else None
    )
    moved = transition(
        txn,
        target,
        at=at,
        gateway=attempt.gateway_code,
        provider_reference=outcome.provider_reference or None,
        failure=failure,
        redirect_url=outcome.redirect_url if isinstance(outcome, ActionRequired) else None,
    )
    if moved is not None:
        return Judgement(Applied.MOVED, changed, moved)
    if txn.status.terminal and target.terminal:
        contradiction = anomaly(
            "contradiction", f"transaction is {txn.status.value}, provider reports {target.value}"
        )
        return dataclasses.replace(contradiction, attempt=changed)
    return Judgement(Applied.STALE, changed)


def record_on_attempt(attempt: AttemptRecord, outcome: Outcome, *, at: datetime) -> AttemptRecord:
    """The attempt after a report: its reference filled in, and its status settled if it
    was still open."""
    reference = attempt.provider_reference
    if outcome.provider_reference and not attempt.provider_reference:
        reference = outcome.provider_reference
    updated = dataclasses.replace(attempt, provider_reference=reference)
    if attempt.status not in OPEN_ATTEMPT:
        return updated
    match outcome:
        case Succeeded():
            updated = dataclasses.replace(updated, status=AttemptStatus.SUCCEEDED, finished_at=at)
        case Pending():
            updated = dataclasses.replace(updated, status=AttemptStatus.PENDING)
        case ActionRequired():
            updated = dataclasses.replace(updated, status=AttemptStatus.ACTION_REQUIRED)
        case Declined(code=code, message=message):
            updated = dataclasses.replace(
                updated,
                status=AttemptStatus.DECLINED,
                error_class="declined",
                error_code=failure_code(code),
                error_message=message[:MAX_ERROR_MESSAGE],
                finished_at=at,
            )
    return updated


# --- the reconciler --------------------------------------------------------------------------

# Transactions the reconciler looks after: they wait for a provider or a customer.
RECONCILED = frozenset({Status.PENDING, Status.UNKNOWN, Status.ACTION_REQUIRED})
EXPIRED = ("expired", "the customer action was not completed in time")
ABSENT = ("absent_at_provider", "the provider has no record of the attempt")


@dataclass(frozen=True, slots=True)
class Fail:
    """Fail the transaction: nothing moved at the provider, or the customer never acted."""

    result: str  # the lookup's result name (absent_failed | expired)
    failure: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Report:
    """Apply the lookup's answer like a callback (`judge`)."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Keep:
    """Change nothing now; `anomaly` when the answer contradicts what we recorded."""

    result: str | None  # None: the lookup failed, its own message is the result
    anomaly: Anomaly | None = None


Reconciliation = Fail | Report | Keep


def reconcile(current: Status, *, expired: bool, found: StatusResult | None) -> Reconciliation:
    """What a status lookup means for a transaction in `current` (one of RECONCILED).
    `expired`: it has waited for the customer past the expiry. Never fail a transaction
    whose money may have moved: only a conclusive "not there" or an expiry fails it."""
    if found is None:
        return Keep(None)
    if isinstance(found, NotFound):
        if current == Status.UNKNOWN and found.conclusive:
            return Fail("absent_failed", ABSENT)
        if current == Status.PENDING and found.conclusive:
            detail = "the provider reported this payment, and now has no record of it"
            return Keep("anomaly", Anomaly("vanished", detail))
        if expired and found.conclusive:
            return Fail("expired", EXPIRED)
        return Keep("not_found_inconclusive")
    if expired and isinstance(found, ActionRequired):
        return Fail("expired", EXPIRED)
    return Report(found)


def lookup_result(applied: Applied, status: Status, outcome: Outcome) -> str:
    """The name a reconciliation round records for an answer applied like a callback."""
    if applied == Applied.UNCHANGED and isinstance(outcome, Pending | ActionRequired):
        return f"still_{status.value}"
    return f"{applied.value}_{status.value}"


def next_lookup_delay(lookups: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff between lookups of one transaction (before jitter)."""
    return float(min(base_s * 2 ** min(lookups - 1, 30), max_s))


# --- stuck in processing ----------------------------------------------------------------------
#
# The gateway worker records an attempt `started` (committed) before it calls the provider.
# If it dies during the call and its command never comes back (the broker lost it), the
# transaction stays `processing` and nothing would move it again. The reconciler looks the
# attempt up by its idempotency key; what the answer allows is below.

# What a lookup may answer besides NotFound (the Outcome union), for isinstance().
_ANSWERS = (Succeeded, Pending, ActionRequired, Declined)
# The code on an attempt given up on as ambiguous (the provider never said what it did).
STALLED = "stalled_call"


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Queue the transaction's command again, rebuilt from its row. The gateway worker takes
    it like any redelivery: it makes the started attempt again with the same idempotency key
    (the provider answers with what it did, or does it now, once) and then follows its own
    rules, including the fallback to the next gateway."""

    result: str


@dataclass(frozen=True, slots=True)
class MarkUnknown:
    """Stop waiting for the gateway worker: the attempt becomes `ambiguous`, the transaction
    `unknown`, and the lookups of unknown transactions resolve it from there (the worker
    never touches a transaction that left `processing`)."""

    result: str


Resumption = Report | Resubmit | MarkUnknown | Keep


def resume_processing(found: StatusResult | None, *, past_horizon: bool) -> Resumption:
    """What the lookup of a `processing` transaction's started attempt means. `found` is
    None when the lookup failed; `past_horizon`: the attempt started longer ago than the
    reconciler waits for a resubmitted command to be finished by the worker.

    - The provider has the payment: apply its answer like a callback (never a fallback: it
      executed). A soft decline is the exception: the worker's fallback decides what next.
    - Proven absent (a conclusive lookup): the call never executed, so making it again is
      safe and the worker's rules carry on. Not failed here: the worker may still fall back
      to another gateway, and a racing redelivery of the original command makes the same call
      with the same key, which a failed transaction could not absorb (money would move
      while we say failed). Resubmitting is exactly what a redelivery does.
    - Nothing conclusive (lookup failed, or the provider's search is only eventually
      consistent): change nothing, look again later. Not resubmitted: a redo that then fails
      to connect counts as "not executed" for the worker, which would fall back to another
      gateway while this call may have executed.
    - Past the horizon, anything but an answer to apply: `unknown`, never `failed` (money may
      have moved).
    """
    if isinstance(found, _ANSWERS) and not (isinstance(found, Declined) and found.retry_elsewhere):
        return Report(found)
    if past_horizon:
        return MarkUnknown("marked_unknown")
    if isinstance(found, Declined):
        return Resubmit("soft_declined_resubmitted")
    if isinstance(found, NotFound) and found.conclusive:
        return Resubmit("absent_resubmitted")
    if isinstance(found, NotFound):
        return Keep("not_found_inconclusive")
    return Keep(None)


def mark_unknown(
    txn: TransactionRecord, attempt: AttemptRecord, *, at: datetime, detail: str
) -> tuple[AttemptRecord, Transition] | None:
    """The started attempt of a `processing` transaction given up on as ambiguous, and the
    transaction moved to `unknown` (no money moves: a withdrawal keeps its hold). None when
    either has moved on since it was read."""
    if txn.status != Status.PROCESSING or attempt.status != AttemptStatus.STARTED:
        return None
    ambiguous = dataclasses.replace(
        attempt,
        status=AttemptStatus.AMBIGUOUS,
        error_class="ambiguous",
        error_code=STALLED,
        error_message=detail[:MAX_ERROR_MESSAGE],
        finished_at=at,
    )
    move = transition(txn, Status.UNKNOWN, at=at, gateway=attempt.gateway_code)
    assert move is not None  # processing -> unknown is a forward move
    return ambiguous, move
