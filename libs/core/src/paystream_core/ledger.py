"""Double-entry ledger rules (design.md §4): which legs a money event posts, and which money
event a status change implies.

Each posting's legs sum to zero. `external` is the provider side (money outside paystream);
a user's `available` and `held` balances can never go negative (database constraint).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from paystream_core.statuses import Status, TransactionType


class Bucket(StrEnum):
    AVAILABLE = "available"
    HELD = "held"
    EXTERNAL = "external"


class MoneyEvent(StrEnum):
    DEPOSIT_CREDITED = "deposit_credited"  # deposit succeeded
    WITHDRAWAL_HELD = "withdrawal_held"  # withdrawal accepted: available -> held
    WITHDRAWAL_SETTLED = "withdrawal_settled"  # withdrawal succeeded: held -> out
    WITHDRAWAL_RELEASED = "withdrawal_released"  # withdrawal failed/rejected: held -> available


@dataclass(frozen=True, slots=True)
class Leg:
    bucket: Bucket
    amount_minor: int  # signed: + increases the bucket


def legs(event: MoneyEvent, amount_minor: int) -> tuple[Leg, Leg]:
    if amount_minor <= 0:
        raise ValueError("postings move a positive amount")
    a = amount_minor
    match event:
        case MoneyEvent.DEPOSIT_CREDITED:
            return Leg(Bucket.EXTERNAL, -a), Leg(Bucket.AVAILABLE, a)
        case MoneyEvent.WITHDRAWAL_HELD:
            return Leg(Bucket.AVAILABLE, -a), Leg(Bucket.HELD, a)
        case MoneyEvent.WITHDRAWAL_SETTLED:
            return Leg(Bucket.HELD, -a), Leg(Bucket.EXTERNAL, a)
        case MoneyEvent.WITHDRAWAL_RELEASED:
            return Leg(Bucket.HELD, -a), Leg(Bucket.AVAILABLE, a)
    raise AssertionError(event)  # pragma: no cover


def balance_deltas(event: MoneyEvent, amount_minor: int) -> tuple[int, int]:
    """(available, held) changes of the user's balance row; `external` has no row."""
    available = held = 0
    for leg in legs(event, amount_minor):
        if leg.bucket == Bucket.AVAILABLE:
            available += leg.amount_minor
        elif leg.bucket == Bucket.HELD:
            held += leg.amount_minor
    return available, held


def posting(kind: TransactionType, old: Status, new: Status) -> MoneyEvent | None:
    """The money event a status change implies (None: the change moves no money).

    A withdrawal holds its amount when it is accepted (leaves `received` for anything but
    `rejected`), settles the hold when it succeeds and releases it when it fails; one that is
    rejected before the hold holds nothing. A deposit credits only when it succeeds.
    """
    if kind == TransactionType.DEPOSIT:
        return MoneyEvent.DEPOSIT_CREDITED if new == Status.SUCCEEDED else None
    if old == Status.RECEIVED:
        return None if new == Status.REJECTED else MoneyEvent.WITHDRAWAL_HELD
    if new == Status.SUCCEEDED:
        return MoneyEvent.WITHDRAWAL_SETTLED
    if new in (Status.FAILED, Status.REJECTED):
        return MoneyEvent.WITHDRAWAL_RELEASED
    return None
