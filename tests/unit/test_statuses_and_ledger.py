"""The forward-only state machine and the double-entry postings."""

from __future__ import annotations

import itertools

import pytest

from paystream_core.ledger import Bucket, MoneyEvent, legs
from paystream_core.statuses import TERMINAL, Status, can_move


def test_terminal_statuses_absorb() -> None:
    for terminal, other in itertools.product(TERMINAL, Status):
        assert not can_move(terminal, other)


def test_no_move_backwards() -> None:
    assert not can_move(Status.PENDING, Status.PROCESSING)
    assert not can_move(Status.PROCESSING, Status.RECEIVED)
    assert not can_move(Status.PENDING, Status.PENDING)
    assert not can_move(Status.PENDING, Status.ACTION_REQUIRED), "late 3-D Secure callback"
    assert not can_move(Status.PENDING, Status.UNKNOWN)


def test_forward_moves() -> None:
    assert can_move(Status.RECEIVED, Status.PROCESSING)
    assert can_move(Status.RECEIVED, Status.REJECTED)
    assert can_move(Status.PROCESSING, Status.PENDING)
    assert can_move(Status.PENDING, Status.SUCCEEDED)
    assert can_move(Status.UNKNOWN, Status.FAILED)
    assert can_move(Status.ACTION_REQUIRED, Status.PENDING)
    assert not can_move(Status.RECEIVED, Status.SUCCEEDED), "never succeed unattempted"


@pytest.mark.parametrize("event", list(MoneyEvent))
def test_every_posting_balances(event: MoneyEvent) -> None:
    posted = legs(event, 1234)
    assert sum(leg.amount_minor for leg in posted) == 0
    assert len({leg.bucket for leg in posted}) == 2


def test_hold_moves_available_to_held() -> None:
    available, held = legs(MoneyEvent.WITHDRAWAL_HELD, 500)
    assert (available.bucket, available.amount_minor) == (Bucket.AVAILABLE, -500)
    assert (held.bucket, held.amount_minor) == (Bucket.HELD, 500)


def test_postings_reject_non_positive_amounts() -> None:
    with pytest.raises(ValueError, match="positive"):
        legs(MoneyEvent.DEPOSIT_CREDITED, 0)
