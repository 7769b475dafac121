"""Properties of the state machine and of the money it moves, over random status requests.

Whatever a worker, a callback or the reconciler asks for, in any order: terminal statuses
absorb, nothing moves backwards (the rank order documented in statuses.py), every applied
move adds one to the version, and the ledger legs of the applied moves leave each balance
where the final status says it must be.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from paystream_core.ledger import Bucket, legs
from paystream_core.records import TransactionRecord
from paystream_core.statuses import TERMINAL, Status, TransactionType, can_move
from paystream_core.transitions import transition

# statuses.py: received < processing < unknown < action_required < pending < terminal.
RANK = {
    Status.RECEIVED: 0,
    Status.PROCESSING: 1,
    Status.UNKNOWN: 2,
    Status.ACTION_REQUIRED: 3,
    Status.PENDING: 4,
    Status.SUCCEEDED: 5,
    Status.FAILED: 5,
    Status.REJECTED: 5,
}
OPEN = {Status.PROCESSING, Status.UNKNOWN, Status.ACTION_REQUIRED, Status.PENDING}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def received(kind: TransactionType, amount_minor: int) -> TransactionRecord:
    return TransactionRecord(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        account_id="acc-1",
        type=kind,
        status=Status.RECEIVED,
        version=1,
        amount_minor=amount_minor,
        currency="EUR",
        country="DE",
        idempotency_key="k",
        payload_hash="h",
    )


requests = st.lists(st.sampled_from(list(Status)), max_size=12)
kinds = st.sampled_from(list(TransactionType))
amounts = st.integers(min_value=1, max_value=10**15)


@settings(max_examples=200, deadline=None)
@given(kind=kinds, amount=amounts, asked=requests)
def test_moves_only_go_forward_and_count_versions(
    kind: TransactionType, amount: int, asked: list[Status]
) -> None:
    txn = received(kind, amount)
    for i, new in enumerate(asked):
        at = T0 + timedelta(seconds=i)
        move = transition(txn, new, at=at, failure=("code", "message"))
        if txn.status in TERMINAL:
            assert move is None, f"{txn.status} is terminal, yet moved to {new}"
            continue
        if move is None:
            assert (
                RANK[new] < RANK[txn.status]
                or new == txn.status
                or (txn.status == Status.RECEIVED and new in (Status.SUCCEEDED, Status.FAILED))
                # rejected means never attempted: only from received
                or (new == Status.REJECTED and txn.status != Status.RECEIVED)
            ), f"{txn.status} -> {new} refused for no documented reason"
            continue
        assert move.before == txn
        assert RANK[new] >= RANK[txn.status], "never backwards"
        assert new != txn.status
        assert not (txn.status == Status.RECEIVED and new in (Status.SUCCEEDED, Status.FAILED))
        assert move.after.status == new
        assert move.after.version == txn.version + 1
        assert move.after.updated_at == at
        assert (move.after.id, move.after.amount_minor) == (txn.id, txn.amount_minor)
        txn = move.after
    assert txn.version == 1 + len(_applied(asked))


def _applied(asked: list[Status]) -> list[Status]:
    """The requests the state machine accepts, replayed with can_move alone."""
    status, out = Status.RECEIVED, []
    for new in asked:
        if can_move(status, new):
            status = new
            out.append(new)
    return out


@settings(max_examples=200, deadline=None)
@given(
    kind=kinds,
    amount=amounts,
    extra=st.integers(min_value=0, max_value=10**6),
    asked=requests,
)
def test_the_ledger_follows_the_final_status(
    kind: TransactionType, amount: int, extra: int, asked: list[Status]
) -> None:
    start = amount + extra if kind == TransactionType.WITHDRAWAL else extra
    available, held = start, 0
    entries: list[int] = []
    txn = received(kind, amount)
    for i, new in enumerate(asked):
        move = transition(txn, new, at=T0 + timedelta(seconds=i))
        if move is None:
            continue
        if move.money is not None:
            posted = legs(move.money, amount)
            assert sum(leg.amount_minor for leg in posted) == 0, "every posting balances"
            for leg in posted:
                entries.append(leg.amount_minor)
                if leg.bucket == Bucket.AVAILABLE:
                    available += leg.amount_minor
                elif leg.bucket == Bucket.HELD:
                    held += leg.amount_minor
            assert available >= 0, "available never below zero"
            assert held >= 0, "held never below zero"
        txn = move.after
    assert sum(entries) == 0, "a transaction's legs sum to zero"
    final = txn.status
    if kind == TransactionType.DEPOSIT:
        credited = amount if final == Status.SUCCEEDED else 0
        assert (available, held) == (start + credited, 0)
    elif final == Status.SUCCEEDED:
        assert (available, held) == (start - amount, 0)
    elif final in OPEN:
        assert (available, held) == (start - amount, amount), "an accepted withdrawal holds"
    else:  # received, failed, rejected
        assert (available, held) == (start, 0)


def test_rejected_only_from_received() -> None:
    for status in Status:
        if status != Status.RECEIVED:
            assert not can_move(status, Status.REJECTED), status
