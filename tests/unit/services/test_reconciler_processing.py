"""The reconciler and a transaction a dead gateway worker left `processing` with a `started`
attempt (the call was in flight, the command never came back): on the in-memory store, with
the real gateway worker's intake and scripted gateways."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream_core.ids import attempt_idempotency_key
from paystream_core.outcomes import Declined, NotFound, Pending, Succeeded
from paystream_core.reports import STALLED
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_gateway_worker.intake import intake
from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import NotExecuted, NotExecutedReason
from paystream_gateways.manager import GatewayManager
from paystream_gateways.protocol import (
    ClientOptions,
    Gateway,
    StatusQuery,
    StatusResult,
)
from paystream_gateways.registry import Registry
from paystream_gateways.specs import ProviderSpec
from paystream_messaging.cloudevents_codec import Event, encode
from paystream_messaging.commands import RequestWithdrawal
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.reconciler import Reconciler
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_storage.payments import command_of
from paystream_streams.records import RawRecord
from tests.support.fake_store import FakeStore, OutboxEvent
from tests.support.scripted_gateways import (
    CollectedDeadLetters,
    ScriptedGateway,
    never,
    ok,
    refused,
)
from tests.unit.services.callback_fakes import RING as CONNECTION_RING
from tests.unit.services.callback_fakes import Connections
from tests.unit.services.worker_env import DESTINATION, REGISTRY, Env, make_env

ACCOUNT = "acc-1"


def _factory(gateway: ScriptedGateway) -> Callable[[Credentials, ClientOptions], Gateway]:
    return lambda credentials, options: gateway


@dataclass
class Stuck:
    """A gateway worker (`worker`) and a reconciler sharing one store and the gateways."""

    worker: Env
    deps: CallbackDeps

    @property
    def store(self) -> FakeStore:
        return self.worker.store

    def reconciler(self, **overrides: Any) -> Reconciler:
        values: dict[str, Any] = {
            "database_url": "postgresql://x@127.0.0.1:1/x",
            "reconciler_pending_age_s": 0,
            "reconciler_processing_age_s": 0,
            "reconciler_backoff_base_s": 30,
            "reconciler_backoff_max_s": 600,
            **overrides,
        }
        return Reconciler(self.deps, ReconcilerSettings(**values))

    def lookup(self, gateway: str, answer: Callable[[StatusQuery], StatusResult]) -> None:
        self.worker.gateways[gateway].lookup = answer

    async def crash_during_call(self, kind: str = "deposit", amount_minor: int = 1000) -> uuid.UUID:
        """The worker stored the command and committed attempt 1 as `started`, then died
        before it recorded the provider's answer; its command never comes back."""
        if kind == "withdrawal":
            self.store.set_balance(self.worker.tenant, ACCOUNT, available=5000)
        txn, record = self.worker.command(kind, account=ACCOUNT, amount_minor=amount_minor)
        [accepted] = await intake(self.worker.deps, [record])
        assert accepted.plan is not None
        assert accepted.plan.seq == 1
        assert self.store.status(txn) == Status.PROCESSING
        assert [a.status for a in self.store.attempts_of(txn)] == [AttemptStatus.STARTED]
        return txn

    async def deliver(self, command: OutboxEvent) -> None:
        """The relay's publication of an outbox row, consumed by the gateway worker."""
        event = Event(
            id=str(command.event_id),
            source=command.source,
            type=command.event_type,
            time=command.occurred_at,
            tenant_id=str(command.tenant_id),
            partition_key=command.key,
            data=command.data,
        )
        encoded = encode(event, REGISTRY)
        self.worker.offset += 1
        await self.worker.run(
            RawRecord(
                "commands", 0, self.worker.offset, encoded.key, encoded.value, encoded.headers
            )
        )


@pytest.fixture
def env() -> Stuck:
    worker = make_env()
    connections = Connections()
    specs = []
    for name, connection_id in worker.connections.items():
        connections.add(worker.tenant, name, connection_id)
        record = connections.records[connection_id]
        connections.records[connection_id] = dataclasses.replace(record, provider=name)
        specs.append(ProviderSpec(name, _factory(worker.gateways[name]), ()))
    manager = GatewayManager(connections, CONNECTION_RING, Registry(specs))
    deps = CallbackDeps(
        store=worker.store,
        registry=REGISTRY,
        gateways=manager,
        connections=connections,
        dead_letters=CollectedDeadLetters(),
    )
    return Stuck(worker, deps)


def answer(result: StatusResult) -> Callable[[StatusQuery], StatusResult]:
    return lambda query: result


def unreachable(query: StatusQuery) -> StatusResult:
    raise NotExecuted("gw_a", NotExecutedReason.CONNECT_FAILED, "connection refused")


# --- the provider has the payment ------------------------------------------------------------


async def test_a_payment_the_provider_has_is_concluded_like_a_callback(env: Stuck) -> None:
    txn = await env.crash_during_call(amount_minor=1500)
    queries: list[StatusQuery] = []

    def executed(query: StatusQuery) -> StatusResult:
        queries.append(query)
        return Succeeded("pi_1")

    env.lookup("gw_a", executed)
    assert await env.reconciler().run_once() == {"moved_succeeded": 1}
    key = attempt_idempotency_key(txn, 1)
    assert queries == [StatusQuery(TransactionType.DEPOSIT, key, None)], "by our key alone"
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (1500, 0)
    assert env.store.ledger_sum(txn) == 0
    [attempt] = env.store.attempts_of(txn)
    assert (attempt.status, attempt.provider_reference) == (AttemptStatus.SUCCEEDED, "pi_1")
    assert env.worker.gateways["gw_a"].calls == [], "nothing paid again"
    assert env.store.commands(txn) == []


async def test_a_pending_payment_waits_for_its_callback(env: Stuck) -> None:
    txn = await env.crash_during_call()
    env.lookup("gw_a", answer(Pending("pi_1")))
    assert await env.reconciler().reconcile(env.worker.tenant, txn) == "moved_pending"
    assert env.store.status(txn) == Status.PENDING


async def test_nothing_is_looked_up_before_the_worker_had_its_chance(env: Stuck) -> None:
    await env.crash_during_call()
    env.lookup("gw_a", answer(Succeeded("pi_1")))
    assert await env.reconciler(reconciler_processing_age_s=120).run_once() == {}


# --- proven absent: the command is queued again --------------------------------------------------


async def test_proven_absent_resubmits_and_the_worker_redoes_the_same_attempt(
    env: Stuck,
) -> None:
    txn = await env.crash_during_call(amount_minor=1500)
    env.lookup("gw_a", answer(NotFound(conclusive=True)))
    assert await env.reconciler().run_once() == {"absent_resubmitted": 1}
    assert env.store.status(txn) == Status.PROCESSING, "not failed: the worker carries on"
    [attempt] = env.store.attempts_of(txn)
    assert attempt.status == AttemptStatus.STARTED
    [command] = env.store.commands(txn)
    stored = env.store.transaction(txn)
    assert command.event_type == "paystream.deposit.requested.v1"
    assert command.key == ACCOUNT, "the account's partition, like every command"
    assert command.source == "/paystream/reconciler"
    assert (command.data["payload_hash"], command.data["amount_minor"]) == (
        stored.payload_hash,
        1500,
    )
    env.worker.gateway("gw_a", ok)
    await env.deliver(command)
    key = attempt_idempotency_key(txn, 1)
    assert env.worker.gateways["gw_a"].calls == [key], "the same attempt, the same key"
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.outcomes(txn) == [("processing", 2), ("succeeded", 3)]
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (1500, 0)
    assert env.worker.dead.records == []


async def test_a_resubmitted_withdrawal_keeps_its_destination_and_may_fall_back(
    env: Stuck,
) -> None:
    txn = await env.crash_during_call("withdrawal", amount_minor=700)
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (4300, 700)
    env.lookup("gw_a", answer(NotFound(conclusive=True)))
    assert await env.reconciler().reconcile(env.worker.tenant, txn) == "absent_resubmitted"
    [command] = env.store.commands(txn)
    assert command.event_type == RequestWithdrawal.EVENT_TYPE
    assert command.data["destination"]["masked"] == "DE89 **** 3000"
    # gw_a refuses the redo outright: proven absent before, so the worker may fall back.
    env.worker.gateway("gw_a", refused)
    env.worker.gateway("gw_b", ok)
    await env.deliver(command)
    [first, second] = env.store.attempts_of(txn)
    assert (first.status, second.gateway_code) == (AttemptStatus.NOT_EXECUTED, "gw_b")
    assert env.worker.gateways["gw_b"].requests[0].destination == DESTINATION
    assert env.store.status(txn) == Status.SUCCEEDED
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (4300, 0)


async def test_a_soft_decline_is_resubmitted_so_the_worker_falls_back(env: Stuck) -> None:
    txn = await env.crash_during_call()
    soft = Declined("try_again", "issuer unavailable", retry_elsewhere=True)
    env.lookup("gw_a", answer(soft))
    result = await env.reconciler().reconcile(env.worker.tenant, txn)
    assert result == "soft_declined_resubmitted"
    assert env.store.status(txn) == Status.PROCESSING
    [command] = env.store.commands(txn)
    env.worker.gateway("gw_a", lambda request: soft)  # the provider's idempotent replay
    env.worker.gateway("gw_b", ok)
    await env.deliver(command)
    assert [a.gateway_code for a in env.store.attempts_of(txn)] == ["gw_a", "gw_b"]
    assert env.store.status(txn) == Status.SUCCEEDED


async def test_every_resubmission_is_a_new_event(env: Stuck) -> None:
    txn = await env.crash_during_call()
    env.lookup("gw_a", answer(NotFound(conclusive=True)))
    reconciler = env.reconciler()
    for _ in range(2):
        assert await reconciler.reconcile(env.worker.tenant, txn) == "absent_resubmitted"
    first, second = env.store.commands(txn)
    assert first.event_id != second.event_id
    assert first.data == second.data
    assert env.store.state.reconciliations[txn].lookups == 2


# --- nothing conclusive ------------------------------------------------------------------------


async def test_a_failed_lookup_backs_off_and_changes_nothing(env: Stuck) -> None:
    txn = await env.crash_during_call()
    env.lookup("gw_a", unreachable)
    reconciler = env.reconciler(reconciler_processing_horizon_s=3600)
    [(result, count)] = (await reconciler.run_once()).items()
    assert count == 1
    assert result.startswith("lookup_failed: connect_failed")
    assert env.store.status(txn) == Status.PROCESSING
    assert env.store.commands(txn) == [], "a redo might fall back while this call executed"
    record = env.store.state.reconciliations[txn]
    assert (record.lookups, record.last_result) == (1, result)
    assert record.next_lookup_at is not None
    assert record.next_lookup_at > datetime.now(UTC)
    assert await reconciler.run_once() == {}, "not due again before its backoff"


async def test_inconclusive_absence_waits(env: Stuck) -> None:
    txn = await env.crash_during_call()
    env.lookup("gw_a", answer(NotFound(conclusive=False)))
    result = await env.reconciler(reconciler_processing_horizon_s=3600).reconcile(
        env.worker.tenant, txn
    )
    assert result == "not_found_inconclusive"
    assert env.store.status(txn) == Status.PROCESSING
    assert env.store.commands(txn) == []


async def test_past_the_horizon_it_becomes_unknown_never_failed(env: Stuck) -> None:
    txn = await env.crash_during_call("withdrawal", amount_minor=700)
    env.lookup("gw_a", unreachable)
    reconciler = env.reconciler(reconciler_processing_horizon_s=0)
    result = await reconciler.reconcile(env.worker.tenant, txn)
    assert result.startswith("marked_unknown: lookup_failed: connect_failed")
    stored = env.store.transaction(txn)
    assert (stored.status, stored.failure_code) == (Status.UNKNOWN, None)
    assert env.store.outcomes(txn) == [("processing", 2), ("unknown", 3)]
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (4300, 700), "the hold stays"
    [attempt] = env.store.attempts_of(txn)
    assert (attempt.status, attempt.error_code) == (AttemptStatus.AMBIGUOUS, STALLED)
    metrics = env.deps.metrics.registry
    labels = {"gateway": "gw_a", "result": "marked_unknown"}
    assert metrics.get_sample_value("paystream_reconciler_lookups_total", labels) == 1
    # Lookups that keep failing never fail it; the unknown path resolves it once the
    # provider answers.
    for _ in range(3):
        await reconciler.reconcile(env.worker.tenant, txn)
        assert env.store.status(txn) == Status.UNKNOWN
    env.lookup("gw_a", answer(NotFound(conclusive=True)))
    assert await reconciler.reconcile(env.worker.tenant, txn) == "absent_failed"
    assert env.store.balance(env.worker.tenant, ACCOUNT) == (5000, 0)
    # The worker never touches it again, whatever command comes.
    env.worker.gateway("gw_a", never)
    env.lookup("gw_a", answer(NotFound(conclusive=True)))
    await env.deliver(_any_command(env, txn))
    assert env.store.status(txn) == Status.FAILED


def _any_command(env: Stuck, txn: uuid.UUID) -> OutboxEvent:
    """The transaction's command, as a resubmission would queue it."""
    command = command_of(env.store.transaction(txn))
    return OutboxEvent(
        env.worker.tenant,
        ACCOUNT,
        uuid.uuid4(),
        command.EVENT_TYPE,
        "/test",
        datetime.now(UTC),
        command.data(),
        topic="commands",
    )


# --- races and what is not stuck -----------------------------------------------------------------


async def test_a_worker_that_moved_on_during_the_lookup_is_left_alone(env: Stuck) -> None:
    txn = await env.crash_during_call()
    [attempt] = env.store.attempts_of(txn)

    def meanwhile(query: StatusQuery) -> StatusResult:
        # No unit is open during a lookup: the worker records that the call did not
        # execute and starts attempt 2 at gw_b.
        state = env.store.state
        state.attempts[attempt.id] = dataclasses.replace(attempt, status=AttemptStatus.NOT_EXECUTED)
        state.attempts[uuid.uuid4()] = dataclasses.replace(
            attempt,
            id=uuid.uuid4(),
            seq=2,
            gateway_code="gw_b",
            idempotency_key=attempt_idempotency_key(txn, 2),
            status=AttemptStatus.STARTED,
        )
        return NotFound(conclusive=True)

    env.lookup("gw_a", meanwhile)
    assert await env.reconciler().reconcile(env.worker.tenant, txn) == "attempt_moved_on"
    assert env.store.status(txn) == Status.PROCESSING
    assert env.store.commands(txn) == []


async def test_a_worker_that_concluded_during_the_lookup_wins(env: Stuck) -> None:
    txn = await env.crash_during_call()

    def meanwhile(query: StatusQuery) -> StatusResult:
        # A redelivered command got the provider's answer first and recorded it.
        state = env.store.state
        before = state.transactions[txn]
        state.transactions[txn] = dataclasses.replace(
            before, status=Status.PENDING, version=before.version + 1
        )
        return NotFound(conclusive=True)

    env.lookup("gw_a", meanwhile)
    assert await env.reconciler().reconcile(env.worker.tenant, txn) == "already_pending"
    assert env.store.status(txn) == Status.PENDING
    assert env.store.commands(txn) == []


async def test_only_a_started_newest_attempt_is_due(env: Stuck) -> None:
    txn = await env.crash_during_call()
    [attempt] = env.store.attempts_of(txn)
    env.store.state.attempts[attempt.id] = dataclasses.replace(
        attempt, status=AttemptStatus.NOT_EXECUTED
    )
    async with env.store.unit(None) as unit:
        assert await unit.processing_due(age_s=0, limit=10) == []
    env.store.state.attempts[attempt.id] = attempt
    async with env.store.unit(None) as unit:
        assert await unit.processing_due(age_s=0, limit=10) == [(env.worker.tenant, txn)]
        assert await unit.processing_due(age_s=3600, limit=10) == []
