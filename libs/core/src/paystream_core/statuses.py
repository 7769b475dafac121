"""Transaction statuses and the forward-only moves between them (design.md §3)."""

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

_RANK = {
    Status.RECEIVED: 0,
    Status.PROCESSING: 1,
    Status.ACTION_REQUIRED: 2,
    Status.PENDING: 2,
    Status.UNKNOWN: 2,
    Status.SUCCEEDED: 3,
    Status.FAILED: 3,
    Status.REJECTED: 3,
}


def can_move(current: Status, new: Status) -> bool:
    """Forward moves only; terminal statuses absorb; the middle statuses may swap."""
    if current.terminal:
        return False
    if current == Status.RECEIVED and new in TERMINAL - {Status.REJECTED}:
        return False
    return _RANK[new] >= _RANK[current] and new != current
