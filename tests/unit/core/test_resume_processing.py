"""A transaction a dead gateway worker left `processing` with a `started` attempt, after a
status lookup of that attempt: paystream_core.reports.resume_processing and mark_unknown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream_core.ids import attempt_idempotency_key
from paystream_core.outcomes import (
    ActionRequired,
    Declined,
    NotFound,
    Outcome,
    Pending,
    StatusResult,
    Succeeded,
)
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.reports import (
    STALLED,
    Keep,
    MarkUnknown,
    Report,
    Resubmit,
    mark_unknown,
    resume_processing,
)
from paystream_core.statuses import (
    OPEN_ATTEMPT,
    AttemptStatus,
    Status,
    TransactionType,
    can_move,
)

AT = datetime(2026, 1, 1, 12, tzinfo=UTC)
CONCLUSIVE, INCONCLUSIVE = NotFound(conclusive=True), NotFound(conclusive=False)
HARD = Declined("do_not_honor", "refused", retry_elsewhere=False, provider_reference="pi_1")
SOFT = Declined("try_again", "issuer unavailable", retry_elsewhere=True)

_text = st.text(max_size=12)
answers = st.one_of(
    st.builds(Succeeded, _text),
    st.builds(Pending, _text),
    st.builds(ActionRequired, _text, _text),
    st.builds(Declined, _text, _text, st.booleans(), st.none() | _text),
)
lookups: st.SearchStrategy[StatusResult | None] = st.one_of(
    st.none(), st.builds(NotFound, st.booleans()), answers
)


def txn(
    status: Status = Status.PROCESSING, kind: TransactionType = TransactionType.DEPOSIT
) -> TransactionRecord:
    return TransactionRecord(
        id=uuid.UUID("00000000-0000-4000-8000-000000000003"),
        tenant_id=uuid.uuid4(),
        account_id="acc-1",
        type=kind,
        status=status,
        version=2,
        amount_minor=1000,
        currency="EUR",
        country="DE",
        idempotency_key="k",
        payload_hash="h",
    )


def started(status: AttemptStatus = AttemptStatus.STARTED) -> AttemptRecord:
    t = txn()
    return AttemptRecord(
        id=uuid.uuid4(),
        tenant_id=t.tenant_id,
        transaction_id=t.id,
        seq=1,
        gateway_code="gw_a",
        connection_id=uuid.uuid4(),
        idempotency_key=attempt_idempotency_key(t.id, 1),
        status=status,
        started_at=AT,
    )


# --- resume_processing -------------------------------------------------------------------------


@pytest.mark.parametrize("past_horizon", [False, True])
@pytest.mark.parametrize(
    "found",
    [Succeeded("pi_1"), Pending("pi_1"), ActionRequired("pi_1", "https://bank.example"), HARD],
    ids=["succeeded", "pending", "action_required", "hard_decline"],
)
def test_an_answer_is_applied_like_a_callback(found: Outcome, past_horizon: bool) -> None:
    assert resume_processing(found, past_horizon=past_horizon) == Report(found)


def test_proven_absent_is_resubmitted_for_the_worker() -> None:
    assert resume_processing(CONCLUSIVE, past_horizon=False) == Resubmit("absent_resubmitted")


def test_a_soft_decline_is_resubmitted_so_the_worker_falls_back() -> None:
    assert resume_processing(SOFT, past_horizon=False) == Resubmit("soft_declined_resubmitted")


def test_nothing_conclusive_waits() -> None:
    assert resume_processing(None, past_horizon=False) == Keep(None)
    assert resume_processing(INCONCLUSIVE, past_horizon=False) == Keep("not_found_inconclusive")


@pytest.mark.parametrize("found", [None, INCONCLUSIVE, CONCLUSIVE, SOFT])
def test_past_the_horizon_it_becomes_unknown(found: StatusResult | None) -> None:
    assert resume_processing(found, past_horizon=True) == MarkUnknown("marked_unknown")


@given(found=lookups, past_horizon=st.booleans())
def test_money_safety_of_every_decision(found: StatusResult | None, past_horizon: bool) -> None:
    decision = resume_processing(found, past_horizon=past_horizon)
    # Only the provider's own answer settles anything; a hard decline is the only way to
    # `failed`, and nothing else ever fails the transaction.
    if isinstance(decision, Report):
        assert decision.outcome == found
        assert not (isinstance(found, Declined) and found.retry_elsewhere)
    else:
        assert decision in (
            MarkUnknown("marked_unknown"),
            Resubmit("absent_resubmitted"),
            Resubmit("soft_declined_resubmitted"),
            Keep(None),
            Keep("not_found_inconclusive"),
        )
    # A resubmission makes the call again (same key) and lets the worker fall back: only
    # once the provider proved the call did not execute, or declined it softly.
    if isinstance(decision, Resubmit):
        assert not past_horizon
        proven_absent = isinstance(found, NotFound) and found.conclusive
        soft = isinstance(found, Declined) and found.retry_elsewhere
        assert proven_absent or soft
    # Without an answer nothing is decided before the horizon.
    if found is None or found == INCONCLUSIVE:
        assert isinstance(decision, MarkUnknown if past_horizon else Keep)


# --- mark_unknown ------------------------------------------------------------------------------


@given(kind=st.sampled_from(TransactionType), detail=st.text(max_size=3000))
def test_marked_unknown_moves_no_money_and_keeps_the_attempt_open(
    kind: TransactionType, detail: str
) -> None:
    before = txn(kind=kind)
    marked = mark_unknown(before, started(), at=AT, detail=detail)
    assert marked is not None
    attempt, move = marked
    assert can_move(Status.PROCESSING, Status.UNKNOWN)
    assert (move.after.status, move.after.version, move.after.updated_at) == (
        Status.UNKNOWN,
        before.version + 1,
        AT,
    )
    assert move.after.gateway_code == "gw_a"
    assert move.after.failure_code is None, "unknown is not a failure"
    assert move.money is None, "a withdrawal keeps its hold: the money may have moved"
    assert (attempt.status, attempt.error_class, attempt.error_code) == (
        AttemptStatus.AMBIGUOUS,
        "ambiguous",
        STALLED,
    )
    assert attempt.error_message == detail[:2000]
    assert attempt.finished_at == AT
    # Ambiguous stays open: a later callback or lookup still settles it.
    assert attempt.status in OPEN_ATTEMPT


@pytest.mark.parametrize(
    ("status", "attempt_status"),
    [
        (Status.PENDING, AttemptStatus.STARTED),
        (Status.SUCCEEDED, AttemptStatus.STARTED),
        (Status.PROCESSING, AttemptStatus.NOT_EXECUTED),
        (Status.PROCESSING, AttemptStatus.SUCCEEDED),
    ],
)
def test_nothing_is_marked_once_either_moved_on(
    status: Status, attempt_status: AttemptStatus
) -> None:
    assert mark_unknown(txn(status), started(attempt_status), at=AT, detail="x") is None
