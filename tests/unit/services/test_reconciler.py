"""The reconciler on the in-memory store with a scripted status lookup (README "Callbacks
and reconciliation"): resolve what callbacks did not, never fail money that may have moved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from paystream_core.outcomes import ActionRequired, NotFound, Pending, Succeeded
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_gateways.errors import Ambiguous, AmbiguousReason
from paystream_gateways.protocol import StatusQuery, StatusResult
from paystream_provider_reports.reconciler import Reconciler
from paystream_provider_reports.settings import ReconcilerSettings
from tests.unit.services.callback_fakes import REDIRECT, CallbackEnv, Seeded, callback_env


@pytest.fixture
def env() -> CallbackEnv:
    return callback_env()


def reconciler(env: CallbackEnv, **overrides: Any) -> Reconciler:
    values: dict[str, Any] = {
        "database_url": "postgresql://x@127.0.0.1:1/x",
        "reconciler_pending_age_s": 0,
        "reconciler_action_expiry_s": 3600,
        "reconciler_backoff_base_s": 30,
        "reconciler_backoff_max_s": 600,
        **overrides,
    }
    return Reconciler(env.deps, ReconcilerSettings(**values))


def answer(result: StatusResult) -> Any:
    return lambda query: result


def booked(env: CallbackEnv, seeded: Seeded) -> tuple[int, str | None, datetime | None]:
    record = env.store.state.reconciliations[seeded.txn]
    return record.lookups, record.last_result, record.next_lookup_at


async def test_pending_is_resolved_by_a_lookup(env: CallbackEnv) -> None:
    seeded = env.seed(amount_minor=1500)
    env.provider.lookup = answer(Succeeded(seeded.provider_reference))
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "moved_succeeded"
    assert env.provider.queries == [
        StatusQuery(TransactionType.DEPOSIT, seeded.reference, seeded.provider_reference)
    ]
    assert env.store.status(seeded.txn) == Status.SUCCEEDED
    assert env.store.outcomes(seeded.txn) == [("succeeded", 4)]
    assert env.store.balance(env.tenant, seeded.account) == (1500, 0)
    assert env.store.ledger_sum(seeded.txn) == 0
    assert env.store.attempts_of(seeded.txn)[0].status == AttemptStatus.SUCCEEDED
    lookups, result, _ = booked(env, seeded)
    assert (lookups, result) == (1, "moved_succeeded")


async def test_still_pending_changes_nothing_and_backs_off(env: CallbackEnv) -> None:
    seeded = env.seed()
    env.provider.lookup = answer(Pending(seeded.provider_reference))
    before = datetime.now(UTC)
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "still_pending"
    assert env.store.status(seeded.txn) == Status.PENDING
    assert env.store.outcomes(seeded.txn) == []
    lookups, _, next_at = booked(env, seeded)
    assert lookups == 1
    assert next_at is not None
    assert before + timedelta(seconds=24) <= next_at <= datetime.now(UTC) + timedelta(seconds=30)


async def test_unknown_proven_absent_fails_and_releases_the_hold(env: CallbackEnv) -> None:
    kind = TransactionType.WITHDRAWAL
    seeded = env.seed(Status.UNKNOWN, kind=kind, amount_minor=700, attempt=AttemptStatus.AMBIGUOUS)
    env.provider.lookup = answer(NotFound(conclusive=True))
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "absent_failed"
    stored = env.store.transaction(seeded.txn)
    assert (stored.status, stored.failure_code) == (Status.FAILED, "absent_at_provider")
    assert env.store.outcomes(seeded.txn) == [("failed", 4)]
    assert env.store.balance(env.tenant, seeded.account) == (1200, 0)
    assert env.store.ledger_sum(seeded.txn) == 0


async def test_unknown_not_found_inconclusively_stays_unknown(env: CallbackEnv) -> None:
    seeded = env.seed(Status.UNKNOWN, attempt=AttemptStatus.AMBIGUOUS)
    env.provider.lookup = answer(NotFound(conclusive=False))
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "not_found_inconclusive"
    assert env.store.status(seeded.txn) == Status.UNKNOWN


async def test_pending_that_vanished_is_an_anomaly_and_kept(env: CallbackEnv) -> None:
    seeded = env.seed()
    env.provider.lookup = answer(NotFound(conclusive=True))
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "anomaly"
    assert env.store.status(seeded.txn) == Status.PENDING, "the money may have moved"
    [anomaly] = env.store.anomalies(seeded.txn)
    assert (anomaly.kind, anomaly.source, anomaly.transaction_status) == (
        "vanished",
        "reconciler",
        "pending",
    )
    assert booked(env, seeded)[1] == "anomaly"


async def test_action_required_past_expiry_fails_as_expired(env: CallbackEnv) -> None:
    seeded = env.seed(Status.ACTION_REQUIRED, attempt=AttemptStatus.ACTION_REQUIRED)
    env.provider.lookup = answer(ActionRequired(seeded.provider_reference, REDIRECT))
    waiting = await reconciler(env).reconcile(env.tenant, seeded.txn)
    assert waiting == "still_action_required", "not expired before its time"
    assert env.store.status(seeded.txn) == Status.ACTION_REQUIRED
    expired = reconciler(env, reconciler_action_expiry_s=0)
    assert await expired.reconcile(env.tenant, seeded.txn) == "expired"
    stored = env.store.transaction(seeded.txn)
    assert (stored.status, stored.failure_code) == (Status.FAILED, "expired")
    assert env.store.outcomes(seeded.txn) == [("failed", 4)]
    metrics = env.deps.metrics.registry
    assert metrics.get_sample_value("paystream_reconciler_expired_total") == 1


async def test_a_customer_who_finished_is_not_expired(env: CallbackEnv) -> None:
    seeded = env.seed(Status.ACTION_REQUIRED, attempt=AttemptStatus.ACTION_REQUIRED)
    env.provider.lookup = answer(Pending(seeded.provider_reference))
    result = await reconciler(env, reconciler_action_expiry_s=0).reconcile(env.tenant, seeded.txn)
    assert result == "moved_pending"
    assert env.store.status(seeded.txn) == Status.PENDING


async def test_a_failed_lookup_changes_nothing_and_backs_off(env: CallbackEnv) -> None:
    seeded = env.seed(Status.UNKNOWN, attempt=AttemptStatus.AMBIGUOUS)

    def broken(query: StatusQuery) -> StatusResult:
        raise Ambiguous("scripted", AmbiguousReason.TIMEOUT, "no answer")

    env.provider.lookup = broken
    first = reconciler(env)
    result = await first.reconcile(env.tenant, seeded.txn)
    assert result.startswith("lookup_failed: timeout")
    assert env.store.status(seeded.txn) == Status.UNKNOWN
    assert env.store.outcomes(seeded.txn) == []
    lookups, last, next_at = booked(env, seeded)
    assert (lookups, last) == (1, result)
    assert next_at is not None
    assert next_at > datetime.now(UTC)
    # Not due again before the backoff has passed.
    assert await first.run_once() == {}
    assert booked(env, seeded)[0] == 1


async def test_a_round_picks_what_is_due(env: CallbackEnv) -> None:
    pending = env.seed()
    done = env.seed(Status.SUCCEEDED, attempt=AttemptStatus.SUCCEEDED)
    action = env.seed(Status.ACTION_REQUIRED, attempt=AttemptStatus.ACTION_REQUIRED)
    env.provider.lookup = answer(Succeeded("pi"))
    counts = await reconciler(env).run_once()
    assert counts == {"moved_succeeded": 1}, "action_required waits for its expiry"
    assert env.store.status(pending.txn) == Status.SUCCEEDED
    assert env.store.status(done.txn) == Status.SUCCEEDED
    assert env.store.status(action.txn) == Status.ACTION_REQUIRED
    assert await reconciler(env).run_once() == {}


async def test_a_finished_transaction_is_skipped(env: CallbackEnv) -> None:
    seeded = env.seed(Status.SUCCEEDED, attempt=AttemptStatus.SUCCEEDED)
    assert await reconciler(env).reconcile(env.tenant, seeded.txn) == "skipped"
    assert env.provider.queries == []
