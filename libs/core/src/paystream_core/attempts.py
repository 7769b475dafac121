"""The gateway worker's rules (design.md §3): which attempt to make next, and what a
provider's answer does to the attempt and to its transaction.

Fallback is ambiguity-aware: only a call that provably did not execute, or a soft decline,
lets the next gateway be tried. A started attempt that never finished may have reached the
provider, so it is made again with the same idempotency key before anything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from paystream_core.ids import attempt_idempotency_key
from paystream_core.outcomes import (
    ActionRequired,
    AmbiguousCall,
    CallResult,
    Declined,
    NotExecutedCall,
    NotFound,
    Pending,
    StatusResult,
    Succeeded,
)
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.routing import Candidate
from paystream_core.statuses import ABANDONED_ATTEMPT, AttemptStatus, Status

_CODE = re.compile(r"[^a-z0-9_.]+")
MAX_ERROR_MESSAGE = 2000
ALL_GATEWAYS_FAILED = "all_gateways_failed"


def failure_code(raw: str) -> str:
    """Provider codes made safe for the outcome schema (^[a-z0-9_.]{1,64}$)."""
    return (_CODE.sub("_", raw.lower()).strip("_") or "unknown")[:64]


# --- the next attempt --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redo:
    """The last attempt was started and never finished: make it again, same key."""

    attempt: AttemptRecord


@dataclass(frozen=True, slots=True)
class NewAttempt:
    seq: int
    candidate: Candidate
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Exhausted:
    """No gateway is left to try: the transaction fails, naming every attempt's reason."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Blocked:
    """The last attempt neither finished as "not executed" nor is unfinished, yet the
    transaction is still processing: a state no rule produces. Nothing is tried (the money
    may have moved); the reason is for the log."""

    reason: str


Step = Redo | NewAttempt | Exhausted | Blocked


def next_step(
    txn: TransactionRecord, attempts: Sequence[AttemptRecord], candidates: Sequence[Candidate]
) -> Step | None:
    """What to do for `txn` now; None when it is not `processing` (finished, waiting for a
    callback, or with the reconciler)."""
    if txn.status != Status.PROCESSING:
        return None
    ordered = sorted(attempts, key=lambda a: a.seq)
    if ordered:
        last = ordered[-1]
        if last.status == AttemptStatus.STARTED:
            return Redo(last)
        if last.status not in ABANDONED_ATTEMPT:
            return Blocked(
                f"attempt {last.seq} at {last.gateway_code} is {last.status} while the"
                " transaction is still processing"
            )
    tried = {a.gateway_code for a in ordered}
    remaining = [c for c in candidates if c.gateway not in tried]
    if not remaining:
        reasons = "; ".join(f"{a.gateway_code}: {a.error_code or a.status}" for a in ordered)
        return Exhausted(ALL_GATEWAYS_FAILED, reasons or "no gateway left to try")
    seq = (ordered[-1].seq if ordered else 0) + 1
    return NewAttempt(seq, remaining[0], attempt_idempotency_key(txn.id, seq))


# --- what an answer does -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What a finished call writes on its attempt."""

    status: AttemptStatus
    provider_reference: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class FallBack:
    """The attempt provably did not execute: record why, then try the next gateway."""

    attempt: AttemptResult


@dataclass(frozen=True, slots=True)
class Conclude:
    """The attempt settles the transaction's next status."""

    attempt: AttemptResult
    status: Status
    provider_reference: str | None = None
    failure: tuple[str, str] | None = None
    redirect_url: str | None = None


Verdict = FallBack | Conclude


def verdict(result: CallResult) -> Verdict:
    match result:
        case NotExecutedCall(reason=reason, message=message):
            return FallBack(_failed(AttemptStatus.NOT_EXECUTED, "not_executed", reason, message))
        case Declined(code=code, message=message, retry_elsewhere=True, provider_reference=ref):
            # Keep the provider's reference: if it ever reports this attempt executed without
            # echoing our key, that reference is how the report finds the abandoned attempt.
            return FallBack(_failed(AttemptStatus.DECLINED, "declined", code, message, ref))
        case Declined(code=code, message=message, provider_reference=reference):
            attempt = _failed(AttemptStatus.DECLINED, "declined", code, message, reference)
            return Conclude(attempt, Status.FAILED, reference, (failure_code(code), message))
        case Succeeded(provider_reference=reference):
            attempt = AttemptResult(AttemptStatus.SUCCEEDED, reference)
            return Conclude(attempt, Status.SUCCEEDED, reference)
        case Pending(provider_reference=reference):
            attempt = AttemptResult(AttemptStatus.PENDING, reference)
            return Conclude(attempt, Status.PENDING, reference)
        case ActionRequired(provider_reference=reference, redirect_url=url):
            attempt = AttemptResult(AttemptStatus.ACTION_REQUIRED, reference)
            return Conclude(attempt, Status.ACTION_REQUIRED, reference, redirect_url=url)
        case AmbiguousCall(reason=reason, message=message):
            attempt = _failed(AttemptStatus.AMBIGUOUS, "ambiguous", reason, message)
            return Conclude(attempt, Status.UNKNOWN)
    raise AssertionError(f"unhandled call result {result!r}")  # pragma: no cover


def _failed(
    status: AttemptStatus, error_class: str, code: str, message: str, reference: str | None = None
) -> AttemptResult:
    code = failure_code(code)
    return AttemptResult(status, reference, error_class, code, message[:MAX_ERROR_MESSAGE])


def redone(result: CallResult) -> CallResult:
    """The answer to a redone attempt (one started before and never finished). Its first
    call may have reached the provider, so a redo refused before it executed (connection
    refused, breaker open) proves nothing about that first call: it is ambiguous, to be
    looked up by the key, never a reason to fall back."""
    if isinstance(result, NotExecutedCall):
        return AmbiguousCall(
            f"redo_{result.reason}",
            f"the redo was not executed ({result.message}); the first call may have been",
        )
    return result


def after_lookup(error: AmbiguousCall, found: StatusResult | None, gateway: str) -> CallResult:
    """An ambiguous call, once the provider was asked what it did with our key (`found` is
    None when the lookup itself failed). Only a conclusive "not there" proves that the
    attempt never executed."""
    if found is None:
        return error
    if isinstance(found, NotFound):
        if found.conclusive:
            detail = f"ambiguous ({error.reason}), then proven absent at {gateway}"
            return NotExecutedCall("absent_at_provider", detail)
        return error
    return found
