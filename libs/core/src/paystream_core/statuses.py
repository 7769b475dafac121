"""Transaction and attempt statuses, and the forward-only moves between them (design.md §3)."""

from __future__ import annotations

from enum import StrEnum


class TransactionType(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"


class Status(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    ACTION_REQUIRED = "action_required"
    PENDING = "pending"
    UNKNOWN = "unknown"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.REJECTED})

# unknown < action_required < pending: an unknown attempt may turn out to wait for the
# customer or the provider; a customer who completed 3-D Secure leaves action_required for
# pending; a late "action required" never pulls a pending payment back.
_RANK = {
    Status.RECEIVED: 0,
    Status.PROCESSING: 1,
    Status.UNKNOWN: 2,
    Status.ACTION_REQUIRED: 3,
    Status.PENDING: 4,
    Status.SUCCEEDED: 5,
    Status.FAILED: 5,
    Status.REJECTED: 5,
}


def can_move(current: Status, new: Status) -> bool:
    """Forward moves only; terminal statuses absorb. `rejected` means never attempted, so
    only a `received` transaction can be rejected, and a `received` one cannot succeed or
    fail: nothing is known of a provider before an attempt."""
    if current.terminal:
        return False
    if new == Status.REJECTED:
        return current == Status.RECEIVED
    if current == Status.RECEIVED and new in TERMINAL:
        return False
    return _RANK[new] >= _RANK[current] and new != current


class AttemptStatus(StrEnum):
    """Where one call to one gateway stands."""

    STARTED = "started"  # recorded and committed before the call: it may have executed
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    ACTION_REQUIRED = "action_required"
    DECLINED = "declined"
    NOT_EXECUTED = "not_executed"
    AMBIGUOUS = "ambiguous"


# Attempt statuses a later report (callback, lookup) may still settle.
OPEN_ATTEMPT = frozenset(
    {
        AttemptStatus.STARTED,
        AttemptStatus.PENDING,
        AttemptStatus.ACTION_REQUIRED,
        AttemptStatus.AMBIGUOUS,
    }
)
# Attempt statuses under which the worker moved on to another gateway: the attempt must not
# have executed, so a report that it did is an anomaly (money may move twice).
ABANDONED_ATTEMPT = frozenset({AttemptStatus.NOT_EXECUTED, AttemptStatus.DECLINED})
