"""A provider's later word (callback or lookup): paystream_core.reports."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from paystream_core.ids import attempt_idempotency_key
from paystream_core.ledger import MoneyEvent
from paystream_core.outcomes import (
    ActionRequired,
    Declined,
    NotFound,
    Outcome,
    Pending,
    Succeeded,
)
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.reports import (
    ABSENT,
    EXPIRED,
    Anomaly,
    Applied,
    Fail,
    Judgement,
    Keep,
    Report,
    judge,
    lookup_result,
    next_lookup_delay,
    reconcile,
    record_on_attempt,
)
from paystream_core.statuses import (
    ABANDONED_ATTEMPT,
    OPEN_ATTEMPT,
    AttemptStatus,
    Status,
    TransactionType,
)

AT = datetime(2026, 1, 1, 12, tzinfo=UTC)
D, W = TransactionType.DEPOSIT, TransactionType.WITHDRAWAL
OK = Succeeded("pi_1")
PENDING = Pending("pi_1")
ACTION = ActionRequired("pi_1", "https://bank.example/3ds")
DECLINED = Declined("Do Not Honor", "refused", False, "pi_1")


def txn(status: Status, kind: TransactionType = D) -> TransactionRecord:
    return TransactionRecord(
        id=uuid.UUID("00000000-0000-4000-8000-000000000002"),
        tenant_id=uuid.uuid4(),
        account_id="acc-1",
        type=kind,
        status=status,
        version=3,
        amount_minor=1000,
        currency="EUR",
        country="DE",
        idempotency_key="k",
        payload_hash="h",
        gateway_code="gw_a",
    )


def attempt(
    status: AttemptStatus, *, seq: int = 1, reference: str | None = "pi_1"
) -> AttemptRecord:
    t = txn(Status.PROCESSING)
    return AttemptRecord(
        id=uuid.uuid4(),
        tenant_id=t.tenant_id,
        transaction_id=t.id,
        seq=seq,
        gateway_code=f"gw_{seq}",
        connection_id=uuid.uuid4(),
        idempotency_key=attempt_idempotency_key(t.id, seq),
        status=status,
        provider_reference=reference,
    )


# --- judge -----------------------------------------------------------------------------------


def test_a_report_of_the_other_type_is_an_anomaly() -> None:
    verdict = judge(txn(Status.PENDING), attempt(AttemptStatus.PENDING), 1, OK, W, at=AT)
    assert verdict.result == Applied.ANOMALY
    assert verdict.anomaly is not None
    assert verdict.anomaly.kind == "type_mismatch"
    assert verdict.anomaly.reported == "succeeded"
    assert (verdict.attempt, verdict.transition) == (None, None)
    # The same type, or no type (lookups), goes on.
    for kind in (D, None):
        verdict = judge(txn(Status.PENDING), attempt(AttemptStatus.PENDING), 1, OK, kind, at=AT)
        assert verdict.result == Applied.MOVED


@pytest.mark.parametrize("abandoned", sorted(ABANDONED_ATTEMPT))
@pytest.mark.parametrize("outcome", [OK, PENDING, ACTION], ids=["ok", "pending", "action"])
def test_an_abandoned_attempt_that_executed_is_an_anomaly(
    abandoned: AttemptStatus, outcome: Outcome
) -> None:
    old = attempt(abandoned, seq=1)
    verdict = judge(txn(Status.SUCCEEDED), old, 2, outcome, D, at=AT)
    assert verdict.result == Applied.ANOMALY
    assert verdict.anomaly is not None
    assert verdict.anomaly.kind == "superseded_attempt_executed"
    assert "superseded by attempt 2" in verdict.anomaly.detail
    assert (verdict.attempt, verdict.transition) == (None, None)


@pytest.mark.parametrize("abandoned", sorted(ABANDONED_ATTEMPT))
def test_a_superseded_attempt_reported_failed_is_harmless(abandoned: AttemptStatus) -> None:
    verdict = judge(txn(Status.PENDING), attempt(abandoned), 2, DECLINED, D, at=AT)
    assert verdict == Judgement(Applied.SUPERSEDED)


@pytest.mark.parametrize("status", sorted(set(AttemptStatus) - ABANDONED_ATTEMPT))
def test_a_superseded_attempt_not_abandoned_is_harmless(status: AttemptStatus) -> None:
    assert judge(txn(Status.PENDING), attempt(status), 2, OK, D, at=AT) == Judgement(
        Applied.SUPERSEDED
    )


def test_unchanged_still_updates_the_attempt() -> None:
    started = attempt(AttemptStatus.STARTED, reference=None)
    verdict = judge(txn(Status.PENDING), started, 1, PENDING, D, at=AT)
    assert verdict.result == Applied.UNCHANGED
    assert verdict.transition is None
    assert verdict.attempt == dataclasses.replace(
        started, status=AttemptStatus.PENDING, provider_reference="pi_1"
    )
    same = attempt(AttemptStatus.PENDING)
    assert judge(txn(Status.PENDING), same, 1, PENDING, D, at=AT) == Judgement(Applied.UNCHANGED)


def test_moved_carries_the_ledger_and_the_provider_fields() -> None:
    verdict = judge(txn(Status.PENDING), attempt(AttemptStatus.PENDING), 1, OK, D, at=AT)
    assert verdict.result == Applied.MOVED
    assert verdict.transition is not None
    assert verdict.transition.money == MoneyEvent.DEPOSIT_CREDITED
    after = verdict.transition.after
    assert (after.status, after.version, after.updated_at) == (Status.SUCCEEDED, 4, AT)
    assert (after.gateway_code, after.provider_reference) == ("gw_1", "pi_1")
    assert verdict.attempt is not None
    assert verdict.attempt.status == AttemptStatus.SUCCEEDED
    assert verdict.attempt.finished_at == AT


def test_a_declined_withdrawal_releases_its_hold_with_a_failure() -> None:
    ambiguous = attempt(AttemptStatus.AMBIGUOUS)
    verdict = judge(txn(Status.UNKNOWN, W), ambiguous, 1, DECLINED, W, at=AT)
    assert verdict.transition is not None
    assert verdict.transition.money == MoneyEvent.WITHDRAWAL_RELEASED
    after = verdict.transition.after
    assert (after.status, after.failure_code, after.failure_message) == (
        Status.FAILED,
        "do_not_honor",
        "refused",
    )


def test_action_required_carries_the_redirect() -> None:
    verdict = judge(txn(Status.UNKNOWN), attempt(AttemptStatus.AMBIGUOUS), 1, ACTION, D, at=AT)
    assert verdict.result == Applied.MOVED
    assert verdict.transition is not None
    assert verdict.transition.redirect_url == "https://bank.example/3ds"
    assert verdict.transition.money is None


@pytest.mark.parametrize(
    ("current", "outcome"),
    [
        (Status.SUCCEEDED, PENDING),
        (Status.SUCCEEDED, ACTION),
        (Status.FAILED, PENDING),
        (Status.PENDING, ACTION),  # a late action_required never pulls pending back
    ],
)
def test_an_older_report_arriving_late_is_stale(current: Status, outcome: Outcome) -> None:
    verdict = judge(txn(current), attempt(AttemptStatus.PENDING), 1, outcome, D, at=AT)
    assert verdict.result == Applied.STALE
    assert (verdict.transition, verdict.anomaly) == (None, None)


@pytest.mark.parametrize(
    ("current", "outcome", "reported"),
    [(Status.SUCCEEDED, DECLINED, "failed"), (Status.FAILED, OK, "succeeded")],
)
def test_two_terminal_statuses_contradict(current: Status, outcome: Outcome, reported: str) -> None:
    verdict = judge(txn(current), attempt(AttemptStatus.SUCCEEDED), 1, outcome, D, at=AT)
    assert verdict.result == Applied.ANOMALY
    assert verdict.anomaly == Anomaly(
        "contradiction", f"transaction is {current.value}, provider reports {reported}", reported
    )
    assert verdict.transition is None


def test_a_contradiction_still_updates_the_attempt() -> None:
    # The reconciler failed it as absent; the provider then reports success for the attempt.
    ambiguous = attempt(AttemptStatus.AMBIGUOUS, reference=None)
    verdict = judge(txn(Status.FAILED), ambiguous, 1, OK, D, at=AT)
    assert verdict.result == Applied.ANOMALY
    assert verdict.attempt == dataclasses.replace(
        ambiguous, status=AttemptStatus.SUCCEEDED, provider_reference="pi_1", finished_at=AT
    )


# --- record_on_attempt -------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(OPEN_ATTEMPT))
def test_open_attempts_are_settled(status: AttemptStatus) -> None:
    open_ = attempt(status)
    assert record_on_attempt(open_, OK, at=AT).status == AttemptStatus.SUCCEEDED
    assert record_on_attempt(open_, PENDING, at=AT).status == AttemptStatus.PENDING
    assert record_on_attempt(open_, ACTION, at=AT).status == AttemptStatus.ACTION_REQUIRED
    declined = record_on_attempt(open_, DECLINED, at=AT)
    assert (declined.status, declined.error_class, declined.error_code, declined.finished_at) == (
        AttemptStatus.DECLINED,
        "declined",
        "do_not_honor",
        AT,
    )


@pytest.mark.parametrize("status", sorted(set(AttemptStatus) - OPEN_ATTEMPT))
def test_settled_attempts_keep_their_status(status: AttemptStatus) -> None:
    settled = attempt(status)
    for outcome in (OK, PENDING, ACTION, DECLINED):
        assert record_on_attempt(settled, outcome, at=AT) == settled


def test_a_missing_reference_is_filled_never_replaced() -> None:
    blank = attempt(AttemptStatus.SUCCEEDED, reference=None)
    assert record_on_attempt(blank, Succeeded("pi_9"), at=AT).provider_reference == "pi_9"
    known = attempt(AttemptStatus.PENDING, reference="pi_1")
    assert record_on_attempt(known, Succeeded("pi_9"), at=AT).provider_reference == "pi_1"
    assert record_on_attempt(blank, Succeeded(""), at=AT).provider_reference is None


# --- reconcile ---------------------------------------------------------------------------------

CONCLUSIVE, INCONCLUSIVE = NotFound(conclusive=True), NotFound(conclusive=False)
RECONCILED = (Status.PENDING, Status.UNKNOWN, Status.ACTION_REQUIRED)


@pytest.mark.parametrize("current", RECONCILED)
@pytest.mark.parametrize("expired", [False, True])
def test_a_failed_lookup_keeps_everything(current: Status, expired: bool) -> None:
    assert reconcile(current, expired=expired, found=None) == Keep(None)


@pytest.mark.parametrize("current", RECONCILED)
@pytest.mark.parametrize("expired", [False, True])
def test_an_inconclusive_absence_keeps_everything(current: Status, expired: bool) -> None:
    assert reconcile(current, expired=expired, found=INCONCLUSIVE) == Keep("not_found_inconclusive")


def test_unknown_proven_absent_fails() -> None:
    assert reconcile(Status.UNKNOWN, expired=False, found=CONCLUSIVE) == Fail(
        "absent_failed", ABSENT
    )


def test_pending_that_vanished_is_an_anomaly_and_kept() -> None:
    decision = reconcile(Status.PENDING, expired=False, found=CONCLUSIVE)
    assert isinstance(decision, Keep)
    assert decision.result == "anomaly"
    assert decision.anomaly is not None
    assert decision.anomaly.kind == "vanished"


def test_action_required_absent_fails_only_once_expired() -> None:
    assert reconcile(Status.ACTION_REQUIRED, expired=True, found=CONCLUSIVE) == Fail(
        "expired", EXPIRED
    )
    assert reconcile(Status.ACTION_REQUIRED, expired=False, found=CONCLUSIVE) == Keep(
        "not_found_inconclusive"
    )


def test_still_waiting_for_the_customer_past_expiry_fails() -> None:
    assert reconcile(Status.ACTION_REQUIRED, expired=True, found=ACTION) == Fail("expired", EXPIRED)
    assert reconcile(Status.ACTION_REQUIRED, expired=False, found=ACTION) == Report(ACTION)


@pytest.mark.parametrize("current", RECONCILED)
@pytest.mark.parametrize("found", [OK, PENDING, DECLINED], ids=["ok", "pending", "declined"])
@pytest.mark.parametrize("expired", [False, True])
def test_an_answer_is_applied_like_a_callback(
    current: Status, found: Outcome, expired: bool
) -> None:
    expired = expired and current == Status.ACTION_REQUIRED
    assert reconcile(current, expired=expired, found=found) == Report(found)


# --- lookup_result, next_lookup_delay ----------------------------------------------------------


def test_lookup_result_names() -> None:
    assert lookup_result(Applied.UNCHANGED, Status.PENDING, PENDING) == "still_pending"
    assert lookup_result(Applied.UNCHANGED, Status.ACTION_REQUIRED, ACTION) == (
        "still_action_required"
    )
    assert lookup_result(Applied.UNCHANGED, Status.SUCCEEDED, OK) == "unchanged_succeeded"
    assert lookup_result(Applied.MOVED, Status.SUCCEEDED, OK) == "moved_succeeded"
    assert lookup_result(Applied.MOVED, Status.FAILED, DECLINED) == "moved_failed"
    assert lookup_result(Applied.STALE, Status.PENDING, ACTION) == "stale_pending"
    assert lookup_result(Applied.ANOMALY, Status.SUCCEEDED, DECLINED) == "anomaly_succeeded"


def test_lookups_back_off_exponentially_up_to_the_cap() -> None:
    delays = [next_lookup_delay(n, base_s=30, max_s=3600) for n in (1, 2, 3, 8, 1000)]
    assert delays == [30, 60, 120, 3600, 3600]
