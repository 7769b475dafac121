"""Double-entry ledger rules (design.md §4): which legs a money event posts.

Each posting's legs sum to zero. `external` is the provider side (money outside paystream);
a user's `available` and `held` balances can never go negative (database constraint).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
