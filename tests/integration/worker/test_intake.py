"""Intake: idempotent storage, holds, rejections, dead letters, crash resumption."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from paystream_gateway_worker.execution import Work, execute
from paystream_gateway_worker.handler import handle
from paystream_gateway_worker.intake import intake
from paystream_gateways.protocol import Outcome, PaymentRequest, Succeeded
from paystream_streams.records import RawRecord
from tests.integration.worker.conftest import WorkerEnv

pytestmark = pytest.mark.integration


def ok(request: PaymentRequest) -> Outcome:
    return Succeeded(f"ref-{request.idempotency_key}")


async def test_withdrawal_holds_then_settles(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", ok)
    _, deposit = worker_env.command(amount_minor=5000)
    await handle(worker_env.deps, deposit)
    txn, withdrawal = worker_env.command("withdrawal", amount_minor=1200)
    await handle(worker_env.deps, withdrawal)
    assert worker_env.status(txn) == "succeeded"
    assert worker_env.balance() == (3800, 0)
    legs = worker_env.query(
        "SELECT sum(amount_minor) FROM ledger_entries WHERE transaction_id = %s", txn
    )
    assert legs == [(0,)], "double entry: a transaction's legs sum to zero"


async def test_withdrawal_failure_releases_the_hold(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", ok)
    _, deposit = worker_env.command(amount_minor=5000)
    await handle(worker_env.deps, deposit)
    from paystream_gateways.protocol import Declined

    worker_env.gateway("gw_a", lambda r: Declined("invalid_account", "bad destination", False))
    txn, withdrawal = worker_env.command("withdrawal", amount_minor=1200)
    await handle(worker_env.deps, withdrawal)
    assert worker_env.status(txn) == "failed"
    assert worker_env.balance() == (5000, 0)


async def test_insufficient_funds_rejected_without_a_call(worker_env: WorkerEnv) -> None:
    a = worker_env.gateway("gw_a", ok)
    txn, withdrawal = worker_env.command("withdrawal", amount_minor=1)
    await handle(worker_env.deps, withdrawal)
    assert worker_env.status(txn) == "rejected"
    assert a.calls == []
    assert worker_env.query("SELECT failure_code FROM transactions WHERE id = %s", txn) == [
        ("insufficient_funds",)
    ]
    assert worker_env.outcomes(txn) == [("rejected", 2)]


async def test_no_gateway_for_the_country_is_rejected(worker_env: WorkerEnv) -> None:
    txn, record = worker_env.command(country="JP")
    await handle(worker_env.deps, record)
    assert worker_env.status(txn) == "rejected"
    assert worker_env.query("SELECT failure_code FROM transactions WHERE id = %s", txn) == [
        ("no_gateway_available",)
    ]


async def test_same_key_other_payload_is_a_dead_letter(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", ok)
    txn, first = worker_env.command(key="same", amount_minor=100)
    _, second = worker_env.command(key="same", amount_minor=999)
    await handle(worker_env.deps, first)
    await handle(worker_env.deps, second)
    assert worker_env.query("SELECT amount_minor FROM transactions WHERE id = %s", txn) == [(100,)]
    [(_, reason)] = worker_env.dead.records
    assert reason.startswith("idempotency_conflict")


async def test_poison_records_go_to_dead_letters(worker_env: WorkerEnv) -> None:
    worker_env.gateway("gw_a", ok)
    _, good = worker_env.command()
    poisons = [
        RawRecord("commands", 0, 100, b"k", b"not json", good.headers),
        RawRecord(
            "commands", 0, 101, b"k", b"{}", [("ce_type", b"paystream.deposit.requested.v1")]
        ),
        RawRecord(
            "commands",
            0,
            102,
            good.key,
            good.value,
            [
                (k, b"paystream.transaction.succeeded.v1" if k == "ce_type" else v)
                for k, v in good.headers
            ],
        ),
    ]
    _, unknown_tenant = worker_env.command(tenant=uuid.uuid4())
    for record in [*poisons, unknown_tenant]:
        await handle(worker_env.deps, record)
    reasons = [reason for _, reason in worker_env.dead.records]
    assert len(reasons) == 4
    assert all(r.startswith("invalid_event") for r in reasons[:3]), reasons
    assert reasons[3].startswith("unknown_tenant")
    assert [r.offset for r, _ in worker_env.dead.records] == [100, 101, 102, unknown_tenant.offset]
    # The partition keeps moving: the good command behind them is processed.
    await handle(worker_env.deps, good)
    assert len(worker_env.query("SELECT 1 FROM transactions")) == 1


class ProcessKilled(BaseException):
    """A kill -9 mid-call, as the test sees it: nothing in the worker handles it (an
    ordinary exception from a call is an ambiguous answer, not a crash)."""


async def test_a_started_attempt_is_redone_with_the_same_key(worker_env: WorkerEnv) -> None:
    """A crash after recording the attempt and before recording its result."""
    a = worker_env.gateway("gw_a", ok)
    txn, record = worker_env.command()

    def crash(request: PaymentRequest) -> Outcome:
        raise ProcessKilled("process killed mid-call")

    worker_env.gateway("gw_a", crash)
    [accepted] = await intake(worker_env.deps, [record])
    with pytest.raises(ProcessKilled):
        await execute(worker_env.deps, [Work(accepted.tenant_id, accepted.transaction_id)])
    assert worker_env.query("SELECT status FROM attempts WHERE transaction_id = %s", txn) == [
        ("started",)
    ]
    worker_env.gateway("gw_a", ok)
    await handle(worker_env.deps, record)  # the redelivery
    assert worker_env.status(txn) == "succeeded"
    assert a.calls[-1] == f"ps-{txn}-1", "same attempt, same idempotency key"
    assert worker_env.query("SELECT count(*) FROM attempts WHERE transaction_id = %s", txn) == [
        (1,)
    ]


async def test_a_command_dead_lettered_after_acceptance_becomes_rejected(
    worker_env: WorkerEnv,
) -> None:
    """PostgreSQL text cannot hold NUL: the command cannot be stored as sent, so it is
    dead-lettered, and its transaction is stored `rejected` (without the offending fields)
    with a `rejected` outcome, instead of being a 404 forever."""
    a = worker_env.gateway("gw_a", ok)
    txn, valid = worker_env.command()
    data = json.loads(valid.value or b"")
    # Produced straight to Kafka: the API refuses control characters at the edge.
    data.update(metadata={"note": "nul\x00byte"}, payment_method="card\x00")
    record = dataclasses.replace(valid, value=json.dumps(data).encode())
    await handle(worker_env.deps, record)
    [(_, reason)] = worker_env.dead.records
    code = reason.split(":", 1)[0]
    assert code in {"processing_failed", "invalid_event"}, reason
    assert a.calls == []
    rows = worker_env.query(
        "SELECT status, failure_code, failure_message, metadata, payment_method, amount_minor"
        " FROM transactions WHERE id = %s",
        txn,
    )
    [(status, failure_code, message, metadata, method, amount)] = rows
    assert (status, failure_code, metadata, method, amount) == ("rejected", code, {}, None, 1000)
    assert "dead-lettered" in message
    assert "\x00" not in message
    assert worker_env.outcomes(txn) == [("rejected", 2)]
    assert worker_env.balance() == (0, 0)

    # Redelivered (the dead letter was sent, the offset not committed): nothing twice.
    await handle(worker_env.deps, record)
    assert worker_env.outcomes(txn) == [("rejected", 2)]
    assert len(worker_env.dead.records) == 2  # at least once, like every record


async def test_an_invalid_command_that_names_its_transaction_becomes_rejected(
    worker_env: WorkerEnv,
) -> None:
    txn, valid = worker_env.command(amount_minor=700)
    data = json.loads(valid.value or b"")
    data["surprise"] = "a field no schema has"  # produced straight to Kafka, not by our API
    record = dataclasses.replace(valid, value=json.dumps(data).encode())
    await intake(worker_env.deps, [record])
    [(_, reason)] = worker_env.dead.records
    assert reason.startswith("invalid_event")
    assert worker_env.query(
        "SELECT status, failure_code, amount_minor FROM transactions WHERE id = %s", txn
    ) == [("rejected", "invalid_event", 700)]
    assert worker_env.outcomes(txn) == [("rejected", 2)]


async def test_dead_letters_that_name_no_new_transaction_store_nothing(
    worker_env: WorkerEnv,
) -> None:
    """A conflict names a transaction that exists; an unknown tenant has nowhere to store
    it; an unparseable record names nothing."""
    worker_env.gateway("gw_a", ok)
    txn, first = worker_env.command(key="same", amount_minor=100)
    _, conflicting = worker_env.command(key="same", amount_minor=999)
    _, stranger = worker_env.command(tenant=uuid.uuid4())
    garbage = RawRecord("commands", 0, 900, b"k", b"\xff\xfe", first.headers)
    for record in (first, conflicting, stranger, garbage):
        await handle(worker_env.deps, record)
    assert worker_env.dead.reasons == ["idempotency_conflict", "unknown_tenant", "invalid_event"]
    assert worker_env.query("SELECT id, status, amount_minor FROM transactions") == [
        (txn, "succeeded", 100)
    ]
