"""design.md §3, the gateway worker's rules: the next attempt, and what an answer does."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from paystream_core.attempts import (
    ALL_GATEWAYS_FAILED,
    MAX_ERROR_MESSAGE,
    AttemptResult,
    Blocked,
    Conclude,
    Exhausted,
    FallBack,
    NewAttempt,
    Redo,
    after_lookup,
    failure_code,
    next_step,
    redone,
    verdict,
)
from paystream_core.ids import attempt_idempotency_key
from paystream_core.outcomes import (
    ActionRequired,
    AmbiguousCall,
    Declined,
    NotExecutedCall,
    NotFound,
    Outcome,
    Pending,
    Succeeded,
)
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.routing import Candidate
from paystream_core.statuses import ABANDONED_ATTEMPT, AttemptStatus, Status, TransactionType

TXN = TransactionRecord(
    id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
    tenant_id=uuid.uuid4(),
    account_id="acc-1",
    type=TransactionType.DEPOSIT,
    status=Status.PROCESSING,
    version=2,
    amount_minor=1000,
    currency="EUR",
    country="DE",
    idempotency_key="k",
    payload_hash="h",
)
CANDIDATES = [Candidate(g, "json", uuid.uuid4(), p) for p, g in enumerate("abc", start=1)]


def attempt(
    seq: int, gateway: str, status: AttemptStatus, code: str | None = None
) -> AttemptRecord:
    return AttemptRecord(
        id=uuid.uuid4(),
        tenant_id=TXN.tenant_id,
        transaction_id=TXN.id,
        seq=seq,
        gateway_code=gateway,
        connection_id=uuid.uuid4(),
        idempotency_key=attempt_idempotency_key(TXN.id, seq),
        status=status,
        error_code=code,
    )


# --- next_step -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [s for s in Status if s != Status.PROCESSING])
def test_nothing_to_do_unless_processing(status: Status) -> None:
    txn = dataclasses.replace(TXN, status=status)
    assert next_step(txn, [attempt(1, "a", AttemptStatus.STARTED)], CANDIDATES) is None
    assert next_step(txn, [], CANDIDATES) is None


def test_first_attempt_goes_to_priority_one() -> None:
    step = next_step(TXN, [], CANDIDATES)
    assert step == NewAttempt(1, CANDIDATES[0], f"ps-{TXN.id}-1")


def test_a_started_attempt_is_redone_with_its_key() -> None:
    earlier = attempt(1, "a", AttemptStatus.NOT_EXECUTED)
    started = attempt(2, "b", AttemptStatus.STARTED)
    step = next_step(TXN, [started, earlier], CANDIDATES)  # any order in
    assert step == Redo(started)
    assert isinstance(step, Redo)
    assert step.attempt.idempotency_key == f"ps-{TXN.id}-2"


@pytest.mark.parametrize("abandoned", sorted(ABANDONED_ATTEMPT))
def test_new_attempt_skips_tried_gateways_in_priority_order(abandoned: AttemptStatus) -> None:
    tried = [attempt(1, "a", abandoned)]
    assert next_step(TXN, tried, CANDIDATES) == NewAttempt(2, CANDIDATES[1], f"ps-{TXN.id}-2")
    # A gateway tried earlier is skipped even when a later one came first in the list.
    tried = [attempt(4, "b", abandoned), attempt(3, "a", AttemptStatus.DECLINED)]
    assert next_step(TXN, tried, CANDIDATES) == NewAttempt(5, CANDIDATES[2], f"ps-{TXN.id}-5")


def test_a_gateway_no_longer_routed_is_not_a_reason_to_stop() -> None:
    tried = [attempt(1, "gone", AttemptStatus.NOT_EXECUTED)]
    assert next_step(TXN, tried, CANDIDATES) == NewAttempt(2, CANDIDATES[0], f"ps-{TXN.id}-2")


def test_nothing_left_is_exhausted_with_every_reason() -> None:
    tried = [
        attempt(1, "a", AttemptStatus.NOT_EXECUTED, "connect_failed"),
        attempt(2, "b", AttemptStatus.DECLINED, "do_not_honor"),
        attempt(3, "c", AttemptStatus.NOT_EXECUTED),
    ]
    step = next_step(TXN, tried, CANDIDATES)
    assert step == Exhausted(
        ALL_GATEWAYS_FAILED, "a: connect_failed; b: do_not_honor; c: not_executed"
    )


def test_no_candidate_at_all_is_exhausted() -> None:
    assert next_step(TXN, [], []) == Exhausted(ALL_GATEWAYS_FAILED, "no gateway left to try")


@pytest.mark.parametrize(
    "status",
    [
        AttemptStatus.SUCCEEDED,
        AttemptStatus.PENDING,
        AttemptStatus.ACTION_REQUIRED,
        AttemptStatus.AMBIGUOUS,
    ],
)
def test_last_attempt_neither_started_nor_abandoned_blocks(status: AttemptStatus) -> None:
    tried = [attempt(1, "a", AttemptStatus.NOT_EXECUTED), attempt(2, "b", status)]
    step = next_step(TXN, tried, CANDIDATES)
    assert isinstance(step, Blocked)
    assert "attempt 2 at b" in step.reason
    assert str(status) in step.reason


# --- verdict ---------------------------------------------------------------------------------


def test_not_executed_falls_back() -> None:
    assert verdict(NotExecutedCall("connect_failed", "refused")) == FallBack(
        AttemptResult(AttemptStatus.NOT_EXECUTED, None, "not_executed", "connect_failed", "refused")
    )


def test_soft_decline_falls_back() -> None:
    decided = verdict(Declined("Do Not Honor", "try elsewhere", retry_elsewhere=True))
    assert decided == FallBack(
        AttemptResult(AttemptStatus.DECLINED, None, "declined", "do_not_honor", "try elsewhere")
    )


def test_soft_decline_keeps_the_provider_reference() -> None:
    decided = verdict(Declined("do_not_honor", "try elsewhere", True, "pi_soft"))
    assert decided.attempt.provider_reference == "pi_soft"


def test_hard_decline_fails_with_a_sanitised_code() -> None:
    decided = verdict(Declined("Insufficient Funds!", "no money", False, "pi_1"))
    assert decided == Conclude(
        AttemptResult(AttemptStatus.DECLINED, "pi_1", "declined", "insufficient_funds", "no money"),
        Status.FAILED,
        "pi_1",
        ("insufficient_funds", "no money"),
    )


def test_long_error_messages_are_cut_on_the_attempt() -> None:
    decided = verdict(NotExecutedCall("rejected", "x" * (MAX_ERROR_MESSAGE + 10)))
    assert decided.attempt.error_message == "x" * MAX_ERROR_MESSAGE


def test_succeeded_pending_action_required_conclude() -> None:
    assert verdict(Succeeded("pi_1")) == Conclude(
        AttemptResult(AttemptStatus.SUCCEEDED, "pi_1"), Status.SUCCEEDED, "pi_1"
    )
    assert verdict(Pending("pi_2")) == Conclude(
        AttemptResult(AttemptStatus.PENDING, "pi_2"), Status.PENDING, "pi_2"
    )
    assert verdict(ActionRequired("pi_3", "https://bank.example/3ds")) == Conclude(
        AttemptResult(AttemptStatus.ACTION_REQUIRED, "pi_3"),
        Status.ACTION_REQUIRED,
        "pi_3",
        redirect_url="https://bank.example/3ds",
    )


def test_ambiguous_is_unknown_never_a_fallback() -> None:
    assert verdict(AmbiguousCall("timeout", "read timeout")) == Conclude(
        AttemptResult(AttemptStatus.AMBIGUOUS, None, "ambiguous", "timeout", "read timeout"),
        Status.UNKNOWN,
    )


# --- after_lookup ----------------------------------------------------------------------------

AMBIGUOUS = AmbiguousCall("timeout", "read timeout")


def test_a_failed_lookup_keeps_the_ambiguity() -> None:
    assert after_lookup(AMBIGUOUS, None, "a") is AMBIGUOUS


def test_an_inconclusive_absence_keeps_the_ambiguity() -> None:
    assert after_lookup(AMBIGUOUS, NotFound(conclusive=False), "a") is AMBIGUOUS


def test_a_conclusive_absence_proves_not_executed() -> None:
    found = after_lookup(AMBIGUOUS, NotFound(conclusive=True), "gw_a")
    assert isinstance(found, NotExecutedCall)
    assert found.reason == "absent_at_provider"
    assert "gw_a" in found.message
    assert "timeout" in found.message
    assert isinstance(verdict(found), FallBack)


@pytest.mark.parametrize(
    "outcome",
    [
        Succeeded("pi"),
        Pending("pi"),
        ActionRequired("pi", "https://x.example"),
        Declined("do_not_honor", "no", False, "pi"),
    ],
)
def test_a_found_outcome_is_the_answer(outcome: Outcome) -> None:
    assert after_lookup(AMBIGUOUS, outcome, "a") == outcome


# --- failure_code ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("insufficient_funds", "insufficient_funds"),
        ("Card Declined", "card_declined"),
        ("E-1234/x", "e_1234_x"),
        ("v1.limit", "v1.limit"),
        ("__weird__", "weird"),
        ("", "unknown"),
        ("!!!", "unknown"),
        ("Ünïcödé", "n_c_d"),
        ("x" * 100, "x" * 64),
    ],
)
def test_failure_code_fits_the_outcome_schema(raw: str, code: str) -> None:
    assert failure_code(raw) == code


def test_a_redo_refused_is_ambiguous_and_other_answers_stand() -> None:
    refused = redone(NotExecutedCall("connect_failed", "connection refused"))
    assert isinstance(refused, AmbiguousCall)
    assert refused.reason == "redo_connect_failed"
    assert isinstance(verdict(refused), Conclude), "never a fallback on its own"
    for answer in (
        Succeeded("ref"),
        Pending("ref"),
        Declined("card_declined", "no", False),
        AmbiguousCall("timeout", "read timeout"),
    ):
        assert redone(answer) is answer
    # Proven absent by a lookup, the redo's attempt may fall back after all.
    proven = after_lookup(refused, NotFound(conclusive=True), "gw_a")
    assert isinstance(verdict(proven), FallBack)
    assert after_lookup(refused, NotFound(conclusive=False), "gw_a") is refused
