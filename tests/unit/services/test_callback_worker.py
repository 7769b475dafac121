"""The callback worker's handler on the in-memory store: dedupe, forward-only moves,
anomalies, orphans (README "Callbacks and reconciliation")."""

from __future__ import annotations

import uuid

import pytest

from paystream_core.ids import attempt_idempotency_key
from paystream_core.records import AttemptRecord
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_provider_reports.handler import CONSUMER, inbox_id, retry_parked
from paystream_streams.records import RawRecord
from tests.unit.services.callback_fakes import CallbackEnv, body, callback_env


@pytest.fixture
def env() -> CallbackEnv:
    return callback_env()


async def test_duplicate_event_ids_make_one_transition(env: CallbackEnv) -> None:
    seeded = env.seed(amount_minor=2500)
    ref = seeded.provider_reference
    payload = body("evt_1", "succeeded", payment_id=ref, reference=seeded.reference)
    # Two copies in one batch, then a third in a later batch.
    assert await env.run(env.record(payload), env.record(payload)) == ["moved", "duplicate"]
    assert await env.run(env.record(payload)) == ["duplicate"]
    assert env.store.status(seeded.txn) == Status.SUCCEEDED
    assert env.store.outcomes(seeded.txn) == [("succeeded", 4)], "seeded at 3, one move"
    assert env.store.balance(env.tenant, seeded.account) == (2500, 0), "credited once"
    assert env.store.ledger_sum(seeded.txn) == 0
    assert (CONSUMER, inbox_id(env.conn, "evt_1")) in env.store.state.inbox
    # Another event saying the same thing is not a duplicate, and changes nothing either.
    again = body("evt_2", "succeeded", payment_id=seeded.provider_reference)
    assert await env.run(env.record(again)) == ["unchanged"]
    assert len(env.store.outcomes(seeded.txn)) == 1


async def test_a_late_pending_after_success_is_stale(env: CallbackEnv) -> None:
    seeded = env.seed()
    ref = seeded.provider_reference
    ok = env.record(body("evt_ok", "succeeded", payment_id=ref))
    late = env.record(body("evt_pending", "pending", payment_id=ref))
    assert await env.run(ok, late) == ["moved", "stale"]
    assert await env.run(env.record(body("evt_p2", "pending", payment_id=ref))) == ["stale"]
    assert env.store.status(seeded.txn) == Status.SUCCEEDED
    assert env.store.outcomes(seeded.txn) == [("succeeded", 4)]
    assert env.store.anomalies() == []


async def test_pending_then_succeeded_moves_twice(env: CallbackEnv) -> None:
    seeded = env.seed(Status.ACTION_REQUIRED, attempt=AttemptStatus.ACTION_REQUIRED)
    ref = seeded.provider_reference
    assert await env.run(env.record(body("e1", "pending", payment_id=ref))) == ["moved"]
    late_action = env.record(body("e0", "action_required", payment_id=ref))
    assert await env.run(late_action) == ["stale"], "never pulls pending back"
    assert await env.run(env.record(body("e2", "succeeded", payment_id=ref))) == ["moved"]
    assert env.store.outcomes(seeded.txn) == [("pending", 4), ("succeeded", 5)]
    assert env.store.attempts_of(seeded.txn)[0].status == AttemptStatus.SUCCEEDED


async def test_a_contradiction_is_an_anomaly_and_changes_nothing(env: CallbackEnv) -> None:
    seeded = env.seed()
    ref = seeded.provider_reference
    assert await env.run(env.record(body("e_ok", "succeeded", payment_id=ref))) == ["moved"]
    declined = env.record(body("e_no", "declined", payment_id=ref))
    assert await env.run(declined) == ["anomaly"]
    assert env.store.status(seeded.txn) == Status.SUCCEEDED, "terminal statuses absorb"
    assert env.store.outcomes(seeded.txn) == [("succeeded", 4)]
    [anomaly] = env.store.anomalies(seeded.txn)
    assert (anomaly.kind, anomaly.transaction_status, anomaly.reported_status) == (
        "contradiction",
        "succeeded",
        "failed",
    )
    assert (anomaly.provider_event_id, anomaly.source, anomaly.tenant_id) == (
        "e_no",
        "callback",
        env.tenant,
    )
    assert env.store.balance(env.tenant, seeded.account) == (1000, 0)
    counted = env.deps.metrics.registry.get_sample_value(
        "paystream_anomalies_total", {"source": "callback", "kind": "contradiction"}
    )
    assert counted == 1


async def test_orphan_is_parked_then_applied_once_the_attempt_exists(env: CallbackEnv) -> None:
    txn = uuid.uuid4()
    reference = attempt_idempotency_key(txn, 1)
    record = env.record(body("evt_early", "succeeded", payment_id="pi_early", reference=reference))
    assert await env.run(record) == ["parked"]
    [parked] = env.store.state.parked.values()
    assert (parked.tenant_id, parked.provider_event_id, parked.resolved_at) == (
        env.tenant,
        "evt_early",
        None,
    )
    assert await retry_parked(env.deps, base_s=0.0, max_s=0.0) == {"still_orphan": 1}
    assert env.store.state.parked[parked.id or 0].tries == 1
    # The gateway worker records the attempt (the provider's answer came after its callback).
    seeded = env.seed(txn=txn, provider_reference="pi_early")
    assert await retry_parked(env.deps, base_s=0.0, max_s=0.0) == {"moved": 1}
    resolved = env.store.state.parked[parked.id or 0]
    assert resolved.resolution == "moved"
    assert resolved.resolved_at is not None
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.outcomes(txn) == [("succeeded", 4)]
    assert env.store.balance(env.tenant, seeded.account) == (1000, 0)
    # Nothing is left to retry, and a redelivery is a duplicate, not a second park.
    assert await retry_parked(env.deps, base_s=0.0, max_s=0.0) == {}
    assert await env.run(record) == ["duplicate"]
    assert len(env.store.state.parked) == 1


async def test_an_orphan_not_yet_due_waits(env: CallbackEnv) -> None:
    record = env.record(body("evt_x", "succeeded", payment_id="pi_x", reference="ps-x-1"))
    assert await env.run(record) == ["parked"]
    assert await retry_parked(env.deps, base_s=60.0, max_s=60.0) == {"still_orphan": 1}
    assert await retry_parked(env.deps, base_s=60.0, max_s=60.0) == {}


async def test_a_second_copy_of_an_orphan_is_parked_once(env: CallbackEnv) -> None:
    payload = body("evt_o", "pending", payment_id="pi_o")
    assert await env.run(env.record(payload), env.record(payload)) == ["parked", "duplicate"]
    assert len(env.store.state.parked) == 1


async def test_unknown_connection_is_a_dead_letter(env: CallbackEnv) -> None:
    seeded = env.seed()
    payload = body("e", "succeeded", payment_id=seeded.provider_reference)
    stranger = env.record(payload, connection=uuid.uuid4())
    assert await env.run(stranger) == ["dead_letter"]
    [(record, reason)] = env.dead.records
    assert record is stranger
    assert reason.startswith("unknown_connection")
    assert env.store.status(seeded.txn) == Status.PENDING


async def test_invalid_event_is_a_dead_letter(env: CallbackEnv) -> None:
    good = env.record(body("e", "succeeded", payment_id="pi"))
    bad = RawRecord("callbacks", 0, 99, good.key, b"not json", good.headers)
    assert await env.run(bad) == ["dead_letter"]
    assert env.dead.records[0][1].startswith("invalid_event")


async def test_a_report_of_the_other_type_is_an_anomaly(env: CallbackEnv) -> None:
    seeded = env.seed()
    wrong = body("e_w", "succeeded", payment_id=seeded.provider_reference, kind="withdrawal")
    assert await env.run(env.record(wrong)) == ["anomaly"]
    [anomaly] = env.store.anomalies(seeded.txn)
    assert anomaly.kind == "type_mismatch"
    assert env.store.status(seeded.txn) == Status.PENDING
    assert env.store.outcomes(seeded.txn) == []


async def test_a_superseded_attempt_reported_executed_is_an_anomaly(env: CallbackEnv) -> None:
    # Attempt 1 at gw_a proved not executed; attempt 2 at gw_b took the payment.
    seeded = env.seed(Status.SUCCEEDED, attempt=AttemptStatus.NOT_EXECUTED)
    conn_b = env.add_connection("gw_b")
    env.store.put_attempt(
        AttemptRecord(
            id=uuid.uuid4(),
            tenant_id=env.tenant,
            transaction_id=seeded.txn,
            seq=2,
            gateway_code="gw_b",
            connection_id=conn_b,
            idempotency_key=attempt_idempotency_key(seeded.txn, 2),
            status=AttemptStatus.SUCCEEDED,
            provider_reference="pi_b",
        )
    )
    report = body("e_a", "succeeded", payment_id="pi_a_late", reference=seeded.reference)
    assert await env.run(env.record(report)) == ["anomaly"]
    [anomaly] = env.store.anomalies(seeded.txn)
    assert anomaly.kind == "superseded_attempt_executed"
    assert anomaly.connection_id == env.conn
    # A decline of the superseded attempt is harmless.
    declined = body("e_a2", "declined", payment_id="pi_a_late", reference=seeded.reference)
    assert await env.run(env.record(declined)) == ["superseded"]
    assert len(env.store.anomalies()) == 1
    assert env.store.outcomes(seeded.txn) == []


async def test_a_callback_names_its_attempt_by_the_provider_reference(env: CallbackEnv) -> None:
    seeded = env.seed(Status.UNKNOWN, attempt=AttemptStatus.AMBIGUOUS)
    # The ambiguous attempt has no provider reference yet: only our echoed key finds it.
    assert await env.run(env.record(body("e0", "pending", payment_id="pi_new"))) == ["parked"]
    echoed = body("e1", "pending", payment_id="pi_new", reference=seeded.reference)
    assert await env.run(env.record(echoed)) == ["moved"]
    assert env.store.attempts_of(seeded.txn)[0].provider_reference == "pi_new"
    # From now on the provider's reference alone is enough.
    assert await env.run(env.record(body("e2", "succeeded", payment_id="pi_new"))) == ["moved"]
    assert env.store.outcomes(seeded.txn) == [("pending", 4), ("succeeded", 5)]


async def test_another_connection_cannot_move_the_payment(env: CallbackEnv) -> None:
    seeded = env.seed()
    other = env.add_connection("gw_b")
    ref = seeded.provider_reference
    forged = body("e", "succeeded", payment_id=ref, reference=seeded.reference)
    assert await env.run(env.record(forged, connection=other)) == ["parked"]
    assert env.store.status(seeded.txn) == Status.PENDING


async def test_declined_withdrawal_releases_and_succeeded_settles(env: CallbackEnv) -> None:
    failed = env.seed(kind=TransactionType.WITHDRAWAL, amount_minor=700)
    ref = failed.provider_reference
    assert await env.run(env.record(body("e1", "declined", payment_id=ref, kind="withdrawal")))
    assert env.store.status(failed.txn) == Status.FAILED
    assert env.store.transaction(failed.txn).failure_code == "do_not_honor"
    assert env.store.balance(env.tenant, failed.account) == (1200, 0)
    paid = env.seed(kind=TransactionType.WITHDRAWAL, amount_minor=700)
    ref = paid.provider_reference
    assert await env.run(env.record(body("e2", "succeeded", payment_id=ref, kind="withdrawal")))
    assert env.store.balance(env.tenant, paid.account) == (500, 0)


async def test_malformed_and_unsupported_callbacks(env: CallbackEnv) -> None:
    malformed = env.record(b'{"id": "e"}')
    unsupported = env.record(body("e_r", "refunded", payment_id="pi"))
    assert await env.run(malformed, unsupported) == ["malformed", "ignored"]
    [anomaly] = env.store.anomalies()
    assert (anomaly.kind, anomaly.transaction_id) == ("malformed_callback", None)
    assert env.dead.records == []
