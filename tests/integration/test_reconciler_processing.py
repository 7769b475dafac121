"""A transaction a dead gateway worker left `processing` with a `started` attempt, on real
PostgreSQL with the provider sandbox over HTTP: the worker's own intake records the attempt
(committed before any call), then it "crashes" and its command never comes back. The
reconciler (a) concludes it when the provider has the payment, (b) queues the command again
when the provider proves it absent, through the outbox, the relay and the broker, and the
worker resumes it with the same key, (c) marks it `unknown` past the horizon when lookups
keep failing, never `failed`; (d) never takes a worker's redo of the attempt, in flight,
for a call a dead worker left (a redo restarts the attempt's clock, on the database's
clock), whether it comes before the reconciler reads the attempt or during its lookup."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from paystream_config import DatabaseSettings, KafkaSettings
from paystream_core.ids import attempt_idempotency_key, payload_hash, transaction_id
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.execution import Plan, plan_attempts, run
from paystream_gateway_worker.handler import handle
from paystream_gateway_worker.intake import Accepted, intake
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.connections import ConnectionRecord, ConnectionRepository
from paystream_gateways.manager import DbConnectionSource, GatewayManager
from paystream_gateways.registry import default_registry
from paystream_gateways.resilience import Breakers
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.cloudevents_codec import Event, encode
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_messaging.topics import COMMANDS, ensure_topics
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.reconciler import Reconciler
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_relay.relay import OutboxRelay
from paystream_sandbox.app import create_app as create_sandbox
from paystream_sandbox.client import SandboxAdmin
from paystream_sandbox.settings import SandboxSettings
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from paystream_streams.records import RawRecord
from tests.integration.gateways.support import serve_app
from tests.support.databases import libpq
from tests.support.kafka import consume_until
from tests.support.polling import wait_for
from tests.support.scripted_gateways import CollectedDeadLetters

pytestmark = pytest.mark.integration

GATEWAY = "jsonpay"
DESTINATION = {"holder_name": "A. Payee", "iban": "DE89370400440532013000"}


@dataclass
class Env:
    database_url: str
    kafka: KafkaSettings
    sandbox: SandboxAdmin
    ring: KeyRing
    tenant: uuid.UUID
    connection: uuid.UUID
    worker: WorkerDeps
    deps: CallbackDeps

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            return conn.execute(sql, args).fetchall()

    def reconciler(self, **overrides: Any) -> Reconciler:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "reconciler_processing_age_s": 0,
            "reconciler_pending_age_s": 0,
            "reconciler_backoff_base_s": 0.05,
            "reconciler_backoff_max_s": 0.1,
            **overrides,
        }
        return Reconciler(self.deps, ReconcilerSettings(**values))

    async def crash_during_call(
        self, kind: str = "deposit", amount_minor: int = 1500
    ) -> tuple[uuid.UUID, str, Accepted]:
        """The command through the real worker's intake (transaction stored, attempt 1
        committed `started`), and nothing after: the worker died there."""
        key, account = f"order-{secrets.token_hex(6)}", f"acc-{secrets.token_hex(4)}"
        txn = transaction_id(self.tenant, key)
        data: dict[str, Any] = {
            "transaction_id": str(txn),
            "tenant_id": str(self.tenant),
            "idempotency_key": key,
            "account_id": account,
            "country": "DE",
            "amount_minor": amount_minor,
            "currency": "EUR",
            "requested_at": "2026-01-01T00:00:00Z",
        }
        if kind == "withdrawal":
            sealed = self.ring.seal(self.tenant, txn, json.dumps(DESTINATION).encode())
            data["destination"] = {
                "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
                "key_id": sealed.key_id,
                "masked": "DE89 **** 3000",
            }
            self.query(
                "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, %s, 'DE') RETURNING id",
                self.tenant,
                account,
            )
            self.query(
                "INSERT INTO balances (tenant_id, account_id, currency, available_minor)"
                " VALUES (%s, %s, 'EUR', 5000) RETURNING account_id",
                self.tenant,
                account,
            )
        data["payload_hash"] = payload_hash(data)
        event = Event(
            id=str(uuid.uuid4()),
            source="/test",
            type=f"paystream.{kind}.requested.v1",
            time=datetime.now(UTC),
            tenant_id=str(self.tenant),
            partition_key=account,
            data=data,
        )
        record = encode(event, self.worker.registry)
        [accepted] = await intake(
            self.worker, [RawRecord("commands", 0, 0, record.key, record.value, record.headers)]
        )
        assert accepted.plan is not None
        assert self.status(txn) == "processing"
        assert self.attempts(txn) == [("started", None, None)]
        return txn, account, accepted

    def status(self, txn: uuid.UUID) -> str:
        return str(self.query("SELECT status FROM transactions WHERE id = %s", txn)[0][0])

    def attempts(self, txn: uuid.UUID) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT status, provider_reference, error_code FROM attempts"
            " WHERE transaction_id = %s ORDER BY seq",
            txn,
        )

    def outcomes(self, txn: uuid.UUID) -> list[str]:
        rows = self.query(
            "SELECT data->>'status' FROM outbox WHERE topic = 'outcomes'"
            " AND data->>'transaction_id' = %s ORDER BY id",
            str(txn),
        )
        return [str(status) for (status,) in rows]

    def balance(self, account: str) -> tuple[int, int]:
        rows = self.query(
            "SELECT available_minor, held_minor FROM balances"
            " WHERE tenant_id = %s AND account_id = %s",
            self.tenant,
            account,
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def ledger_sum(self, txn: uuid.UUID) -> int:
        rows = self.query(
            "SELECT coalesce(sum(amount_minor), 0) FROM ledger_entries WHERE transaction_id = %s",
            txn,
        )
        return int(rows[0][0])

    def executed(self, txn: uuid.UUID) -> list[dict[str, Any]]:
        """What the provider holds for our attempt 1 (each entry is money moved once)."""
        return self.sandbox.ledger(idempotency_key=attempt_idempotency_key(txn, 1))

    def publish_outbox(self) -> None:
        """The relay, as its process runs it, until the outbox is published."""
        relay = OutboxRelay(
            conninfo=libpq(self.database_url),
            new_producer=lambda: Producer(producer_config(self.kafka, client_id="test-relay")),
            topic_for=self.kafka.topic,
            encode=lambda event: encode(event, SchemaRegistry(), validate=False),
        )
        stop = threading.Event()
        thread = threading.Thread(target=relay.run, args=(stop,), kwargs={"idle_poll_s": 0.1})
        thread.start()
        try:

            def published() -> bool:
                assert thread.is_alive(), "the relay stopped on its own"
                rows = self.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                return rows == [(0,)]

            wait_for(published, timeout=30, what="the outbox published")
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()


async def until(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval, not a synchronisation


@pytest.fixture
def sandbox() -> Iterator[SandboxAdmin]:
    settings = SandboxSettings(callback_delay_ms=10, settle_delay_ms=100)
    with serve_app(create_sandbox(settings)) as url, SandboxAdmin(url) as admin:
        yield admin


@pytest.fixture
async def env(
    primary_database_url: str, kafka_bootstrap: str, sandbox: SandboxAdmin
) -> AsyncIterator[Env]:
    url = primary_database_url
    tenant, connection = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies)"
            " VALUES (%s, 'json', %s, '{EUR}')",
            (GATEWAY, GATEWAY),
        )
        for kind in ("deposit", "withdrawal"):
            conn.execute(
                "INSERT INTO gateway_countries (gateway_code, country, transaction_type,"
                " priority) VALUES (%s, 'DE', %s, 1)",
                (GATEWAY, kind),
            )
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,))
    ring = KeyRing.from_settings(
        KeyRingSettings(keyring=SecretStr(new_key_entry("k1")), active_key_id="k1")
    )
    engine = create_engine(DatabaseSettings(database_url=url))
    async with sessionmaker(engine)() as session, session.begin():
        repo = ConnectionRepository(session, ring, default_registry())
        credentials = sandbox.provision("json")
        await repo.add(tenant, GATEWAY, "main", credentials, connection_id=connection)
    kafka = KafkaSettings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=f"rp{uuid.uuid4().hex[:10]}"
    )
    ensure_topics(kafka)
    settings = GatewayWorkerSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=url,
        worker_retry_attempts=2,
        worker_retry_base_s=0.01,
        worker_retry_max_s=0.05,
    )
    registry = SchemaRegistry()
    store = PgPaymentStore(HotPool(settings), registry)
    source = DbConnectionSource(sessionmaker(engine))
    worker = WorkerDeps(
        settings=settings,
        store=store,
        registry=registry,
        gateways=GatewayManager(source, ring),
        keyring=ring,
        dead_letters=CollectedDeadLetters(),
        breakers=Breakers(5, 1.0),
    )
    deps = CallbackDeps(
        store=store,
        registry=registry,
        gateways=GatewayManager(source, ring),
        connections=source,
        dead_letters=CollectedDeadLetters(),
    )
    yield Env(url, kafka, sandbox, ring, tenant, connection, worker, deps)
    await store.close()
    await engine.dispose()


async def test_a_payment_the_provider_has_is_concluded(env: Env) -> None:
    txn, account, accepted = await env.crash_during_call()
    assert accepted.plan is not None
    # The call reached the provider and executed; the worker died before the answer.
    gateway = await env.worker.gateways.get(env.tenant, accepted.plan.connection_id)
    paid = await gateway.deposit(accepted.plan.request)
    assert await env.reconciler(reconciler_processing_age_s=3600).run_once() == {}
    assert await env.reconciler().run_once() == {"moved_succeeded": 1}
    assert env.status(txn) == "succeeded"
    assert env.outcomes(txn) == ["processing", "succeeded"]
    assert env.attempts(txn) == [("succeeded", paid.provider_reference, None)]
    assert env.balance(account) == (1500, 0)
    assert env.ledger_sum(txn) == 0
    assert len(env.executed(txn)) == 1, "nothing paid twice"
    assert await env.reconciler().run_once() == {}, "finished: nothing left to look up"


async def test_proven_absent_goes_back_to_the_worker_through_the_broker(env: Env) -> None:
    txn, account, _ = await env.crash_during_call("withdrawal", amount_minor=700)
    assert env.balance(account) == (4300, 700)
    assert env.executed(txn) == [], "the call never reached the provider"
    assert await env.reconciler().run_once() == {"absent_resubmitted": 1}
    assert env.status(txn) == "processing"
    [(event_type, source)] = env.query(
        "SELECT event_type, source FROM outbox WHERE topic = %s AND key = %s",
        COMMANDS,
        account,
    )
    assert (event_type, source) == ("paystream.withdrawal.requested.v1", "/paystream/reconciler")
    await asyncio.to_thread(env.publish_outbox)
    topic = env.kafka.topic(COMMANDS)
    mine = account.encode()
    [received] = [
        r
        for r in await asyncio.to_thread(
            consume_until,
            env.kafka.kafka_bootstrap,
            topic,
            lambda records: any(r.key == mine for r in records),
        )
        if r.key == mine
    ]
    headers = list(received.headers.items())
    record = RawRecord(topic, received.partition, received.offset, mine, received.value, headers)
    await handle(env.worker, record)
    assert env.status(txn) == "succeeded"
    [paid] = env.executed(txn)
    assert paid["kind"] == "withdrawal"
    assert env.attempts(txn) == [("succeeded", paid["id"], None)]
    assert env.outcomes(txn) == ["processing", "succeeded"]
    assert env.balance(account) == (4300, 0)
    assert env.ledger_sum(txn) == 0, "double entry"


async def test_lookups_that_keep_failing_end_in_unknown_never_failed(env: Env) -> None:
    txn, account, _ = await env.crash_during_call()
    env.sandbox.set_faults("json", down=True)
    waiting = env.reconciler(reconciler_processing_horizon_s=3600)
    [(result, count)] = (await waiting.run_once()).items()
    assert (count, result.split(":")[0]) == (1, "lookup_failed")
    assert env.status(txn) == "processing"
    [(lookups, last)] = env.query(
        "SELECT lookups, last_result FROM reconciliations WHERE transaction_id = %s", txn
    )
    assert (lookups, last) == (1, result)
    given_up = env.reconciler(reconciler_processing_horizon_s=0)

    async def unknown() -> bool:
        await given_up.run_once()
        return env.status(txn) == "unknown"

    await until(unknown, 20, "the transaction to be marked unknown")
    assert env.attempts(txn) == [("ambiguous", None, "stalled_call")]
    assert env.outcomes(txn) == ["processing", "unknown"]
    [(last,)] = env.query("SELECT last_result FROM reconciliations WHERE transaction_id = %s", txn)
    assert last.startswith("marked_unknown: lookup_failed")
    # Lookups of the unknown transaction keep failing: it stays unknown, never failed.
    for _ in range(3):
        await given_up.run_once()
    assert env.status(txn) == "unknown"
    assert env.balance(account) == (0, 0)
    assert env.query("SELECT count(*) FROM outbox WHERE topic = %s", COMMANDS) == [(0,)]


# --- a redo in flight is not a call a dead worker left ------------------------------------


def _worker_died_long_ago(env: Env, txn: uuid.UUID) -> None:
    env.query(
        "UPDATE attempts SET started_at = now() - interval '200 seconds'"
        " WHERE transaction_id = %s RETURNING id",
        txn,
    )
    env.query(
        "UPDATE transactions SET updated_at = now() - interval '200 seconds'"
        " WHERE id = %s RETURNING id",
        txn,
    )


async def _redo_planned(env: Env, txn: uuid.UUID) -> Plan:
    """The command came back (a redelivery): the worker plans the redo of the started
    attempt, committed, and is about to call (or calling) the provider."""
    async with env.worker.store.unit(env.tenant) as unit:
        [plan] = await plan_attempts(env.worker, unit, [txn])
    assert (plan.redo, plan.seq) == (True, 1)
    return plan


async def _redo_finishes_once(env: Env, txn: uuid.UUID, plan: Plan) -> None:
    await run(env.worker, [plan])
    assert env.status(txn) == "succeeded"
    assert len(env.executed(txn)) == 1, "paid once"
    assert env.query("SELECT count(*) FROM outbox WHERE topic = %s", COMMANDS) == [(0,)]


async def test_a_redo_in_flight_is_not_due(env: Env) -> None:
    txn, _, _ = await env.crash_during_call()
    _worker_died_long_ago(env, txn)
    plan = await _redo_planned(env, txn)
    # Its provider has not seen the redo yet ("not found"): a reconciler that took the old
    # started_at for a dead worker's would queue the command again, and a second worker
    # would redo the same attempt, or fall back to the next gateway, while this one calls.
    assert await env.reconciler(reconciler_processing_age_s=120).run_once() == {}
    assert env.status(txn) == "processing"
    await _redo_finishes_once(env, txn, plan)


async def test_found_due_then_redone_before_it_is_read_is_left_alone(env: Env) -> None:
    txn, _, _ = await env.crash_during_call()
    _worker_died_long_ago(env, txn)
    reconciler = env.reconciler(reconciler_processing_age_s=120)
    async with env.deps.store.unit(None) as unit:
        assert await unit.processing_due(age_s=120, limit=10) == [(env.tenant, txn)]
    # Between the round's query and its read of the transaction, the command came back.
    plan = await _redo_planned(env, txn)
    # The provider has not seen the redo yet: a lookup now would prove it absent and queue
    # the command again while this worker calls. The read sees the attempt restarted.
    assert await reconciler.reconcile(env.tenant, txn) == "skipped"
    assert env.status(txn) == "processing"
    assert env.query("SELECT count(*) FROM reconciliations") == [(0,)], "nothing looked up"
    # A redo restarts the attempt, not the transaction: one that keeps being redone (a
    # worker that crashes on it) is still reported stuck in `processing` by its updated_at.
    async with env.deps.store.unit(None) as unit:
        assert await unit.unresolved_count(horizon_s=3600, stuck_processing_s=120) == 1
    await _redo_finishes_once(env, txn, plan)


class _RedoDuringLookup:
    """The connection source the reconciler reads just before its lookup: the first read
    lets a worker plan its redo first (the race: found due, then redone, then looked up)."""

    def __init__(self, inner: DbConnectionSource, redo: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.redo: Callable[[], Awaitable[None]] | None = redo

    async def load(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord | None:
        if self.redo is not None:
            redo, self.redo = self.redo, None
            await redo()
        return await self.inner.load(tenant_id, connection_id)

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None:
        return await self.inner.load_by_code(tenant_id, gateway_code, code)


async def test_a_redo_between_the_lookup_and_its_resolution_is_left_alone(env: Env) -> None:
    txn, _, _ = await env.crash_during_call()
    _worker_died_long_ago(env, txn)
    plans: list[Plan] = []

    async def redo() -> None:
        plans.append(await _redo_planned(env, txn))

    assert isinstance(env.deps.connections, DbConnectionSource)
    env.deps.connections = _RedoDuringLookup(env.deps.connections, redo)
    reconciler = env.reconciler(reconciler_processing_age_s=120)
    # Due (the attempt looked abandoned), proven absent (the redo has not called yet), but
    # under the transaction's lock the attempt was started again since: left to the worker.
    assert await reconciler.reconcile(env.tenant, txn) == "attempt_redone"
    assert env.status(txn) == "processing"
    [plan] = plans
    await _redo_finishes_once(env, txn, plan)
