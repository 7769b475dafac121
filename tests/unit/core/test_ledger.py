"""design.md §4: which money event each allowed status change posts, and its legs."""

from __future__ import annotations

import itertools

import pytest

from paystream_core.ledger import Bucket, Leg, MoneyEvent, balance_deltas, legs, posting
from paystream_core.statuses import Status, TransactionType, can_move

D, W = TransactionType.DEPOSIT, TransactionType.WITHDRAWAL
REC, PRO, UNK, ACT, PEN = (
    Status.RECEIVED,
    Status.PROCESSING,
    Status.UNKNOWN,
    Status.ACTION_REQUIRED,
    Status.PENDING,
)
OK, FAIL, REJ = Status.SUCCEEDED, Status.FAILED, Status.REJECTED
CREDIT = MoneyEvent.DEPOSIT_CREDITED
HOLD = MoneyEvent.WITHDRAWAL_HELD
SETTLE = MoneyEvent.WITHDRAWAL_SETTLED
RELEASE = MoneyEvent.WITHDRAWAL_RELEASED

# Every (type, old, new) that can_move allows, and the money event it implies.
POSTINGS: dict[tuple[TransactionType, Status, Status], MoneyEvent | None] = {
    # deposits: money moves only when the provider says it did
    (D, REC, PRO): None,
    (D, REC, UNK): None,
    (D, REC, ACT): None,
    (D, REC, PEN): None,
    (D, REC, REJ): None,
    (D, PRO, UNK): None,
    (D, PRO, ACT): None,
    (D, PRO, PEN): None,
    (D, PRO, OK): CREDIT,
    (D, PRO, FAIL): None,
    (D, UNK, ACT): None,
    (D, UNK, PEN): None,
    (D, UNK, OK): CREDIT,
    (D, UNK, FAIL): None,
    (D, ACT, PEN): None,
    (D, ACT, OK): CREDIT,
    (D, ACT, FAIL): None,
    (D, PEN, OK): CREDIT,
    (D, PEN, FAIL): None,
    # withdrawals: accepted -> hold; succeeded -> settle; failed -> release.
    # Only a received transaction can be rejected (never attempted), before any hold.
    (W, REC, PRO): HOLD,
    (W, REC, UNK): HOLD,
    (W, REC, ACT): HOLD,
    (W, REC, PEN): HOLD,
    (W, REC, REJ): None,  # rejected before the hold: nothing was held
    (W, PRO, UNK): None,
    (W, PRO, ACT): None,
    (W, PRO, PEN): None,
    (W, PRO, OK): SETTLE,
    (W, PRO, FAIL): RELEASE,
    (W, UNK, ACT): None,
    (W, UNK, PEN): None,
    (W, UNK, OK): SETTLE,
    (W, UNK, FAIL): RELEASE,
    (W, ACT, PEN): None,
    (W, ACT, OK): SETTLE,
    (W, ACT, FAIL): RELEASE,
    (W, PEN, OK): SETTLE,
    (W, PEN, FAIL): RELEASE,
}


def test_the_table_covers_exactly_the_allowed_moves() -> None:
    allowed = {
        (kind, old, new)
        for kind, old, new in itertools.product(TransactionType, Status, Status)
        if can_move(old, new)
    }
    assert set(POSTINGS) == allowed


@pytest.mark.parametrize(("move", "event"), POSTINGS.items(), ids=lambda v: str(v))
def test_posting(move: tuple[TransactionType, Status, Status], event: MoneyEvent | None) -> None:
    assert posting(*move) == event


LEGS = {
    CREDIT: ((Bucket.EXTERNAL, -700), (Bucket.AVAILABLE, 700)),
    HOLD: ((Bucket.AVAILABLE, -700), (Bucket.HELD, 700)),
    SETTLE: ((Bucket.HELD, -700), (Bucket.EXTERNAL, 700)),
    RELEASE: ((Bucket.HELD, -700), (Bucket.AVAILABLE, 700)),
}
DELTAS = {CREDIT: (700, 0), HOLD: (-700, 700), SETTLE: (0, -700), RELEASE: (700, -700)}


@pytest.mark.parametrize("event", list(MoneyEvent))
def test_legs_and_balance_deltas(event: MoneyEvent) -> None:
    posted = legs(event, 700)
    assert posted == tuple(Leg(bucket, amount) for bucket, amount in LEGS[event])
    assert sum(leg.amount_minor for leg in posted) == 0
    assert balance_deltas(event, 700) == DELTAS[event]


@pytest.mark.parametrize("amount", [0, -1])
@pytest.mark.parametrize("event", list(MoneyEvent))
def test_only_positive_amounts_post(event: MoneyEvent, amount: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        legs(event, amount)


def test_a_withdrawal_that_settles_after_its_hold_leaves_nothing_held() -> None:
    held = sum(balance_deltas(e, 900)[1] for e in (HOLD, SETTLE))
    released = [balance_deltas(e, 900) for e in (HOLD, RELEASE)]
    assert held == 0
    assert tuple(map(sum, zip(*released, strict=True))) == (0, 0)
