"""The reconciler against the provider sandbox over HTTP: a pending transaction whose
callback never comes is resolved by a status lookup; an unfinished customer action
expires; a payment still open past the horizon is reported, never failed."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from paystream_cli.commands.transactions import transactions
from paystream_core.ids import payload_hash, transaction_id
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.handler import handle
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.manager import DbConnectionSource, GatewayManager
from paystream_gateways.resilience import Breakers
from paystream_messaging.cloudevents_codec import Event, encode
from paystream_messaging.schemas import SchemaRegistry
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.reconciler import Reconciler
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from paystream_streams.records import RawRecord
from tests.integration.callbacks.conftest import Conn, Stack

pytestmark = pytest.mark.integration


@dataclass
class _Dead:
    records: list[tuple[RawRecord, str]] = field(default_factory=list)

    async def send(self, record: RawRecord, reason: str) -> None:
        self.records.append((record, reason))


@dataclass
class Env:
    stack: Stack
    gateway_worker: WorkerDeps
    deps: CallbackDeps

    def reconciler(self, **overrides: Any) -> Reconciler:
        values: dict[str, Any] = {
            "database_url": self.stack.database_url,
            "reconciler_pending_age_s": 0,
            "reconciler_action_expiry_s": 0,
            "reconciler_backoff_base_s": 0.05,
            "reconciler_backoff_max_s": 0.1,
            **overrides,
        }
        return Reconciler(self.deps, ReconcilerSettings(**values))

    async def deposit(self, conn: Conn, scenario: str) -> tuple[uuid.UUID, str]:
        """A deposit through the real gateway worker, against the sandbox."""
        key, account = f"order-{secrets.token_hex(6)}", f"acc-{secrets.token_hex(4)}"
        txn = transaction_id(conn.tenant, key)
        data: dict[str, Any] = {
            "transaction_id": str(txn),
            "tenant_id": str(conn.tenant),
            "idempotency_key": key,
            "account_id": account,
            "country": "DE",
            "amount_minor": 1500,
            "currency": "EUR",
            "requested_at": "2026-01-01T00:00:00Z",
            "metadata": {"sandbox_scenario": scenario},
        }
        data["payload_hash"] = payload_hash(data)
        event = Event(
            id=str(uuid.uuid4()),
            source="/test",
            type="paystream.deposit.requested.v1",
            time=datetime.now(UTC),
            tenant_id=str(conn.tenant),
            partition_key=account,
            data=data,
        )
        record = encode(event, self.gateway_worker.registry)
        await handle(
            self.gateway_worker,
            RawRecord("commands", 0, 0, record.key, record.value, record.headers),
        )
        return txn, account


async def until(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval, not a synchronisation


@pytest.fixture
async def env(stack: Stack) -> AsyncIterator[Env]:
    settings = GatewayWorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=stack.database_url,
        worker_retry_attempts=2,
        worker_retry_base_s=0.01,
        worker_retry_max_s=0.05,
    )
    engine = create_engine(settings)
    source = DbConnectionSource(sessionmaker(engine))
    registry = SchemaRegistry()
    store = PgPaymentStore(HotPool(settings), registry)
    gw = WorkerDeps(
        settings=settings,
        store=store,
        registry=registry,
        gateways=GatewayManager(source, stack.ring),
        keyring=stack.ring,
        dead_letters=_Dead(),
        breakers=Breakers(5, 1.0),
    )
    deps = CallbackDeps(
        store=store,
        registry=registry,
        gateways=GatewayManager(source, stack.ring),
        connections=source,
        dead_letters=_Dead(),
    )
    yield Env(stack, gw, deps)
    await store.close()
    stack.sandbox.set_faults("json", auto_settle=True)


async def test_pending_without_callback_is_resolved_by_lookup(env: Env) -> None:
    stack = env.stack
    conn = stack.connect(stack.new_tenant(), "json")  # no webhook: the callback never comes
    txn, account = await env.deposit(conn, "pending")
    assert stack.status(txn) == "pending"
    reconciler = env.reconciler()

    async def resolved() -> bool:
        await reconciler.run_once()
        return stack.status(txn) == "succeeded"

    await until(resolved, 20, "the reconciler to resolve the deposit")
    assert stack.outcomes(txn) == ["processing", "pending", "succeeded"]
    assert stack.available(conn.tenant, account) == 1500
    assert stack.ledger_sum(txn) == 0
    [(lookups, result)] = stack.query(
        "SELECT lookups, last_result FROM reconciliations WHERE transaction_id = %s", txn
    )
    assert lookups >= 1
    assert result == "moved_succeeded"


async def test_action_required_past_expiry_fails_as_expired(env: Env) -> None:
    stack = env.stack
    conn = stack.connect(stack.new_tenant(), "json")
    txn, _ = await env.deposit(conn, "action_required")
    assert stack.status(txn) == "action_required"
    await env.reconciler(reconciler_action_expiry_s=3600).run_once()
    assert stack.status(txn) == "action_required", "not expired before its time"
    reconciler = env.reconciler()

    async def expired() -> bool:
        await reconciler.run_once()
        return stack.status(txn) == "failed"

    await until(expired, 20, "expiry")
    assert stack.query("SELECT failure_code FROM transactions WHERE id = %s", txn) == [("expired",)]


async def test_still_pending_past_the_horizon_is_reported_never_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = env.stack
    stack.sandbox.set_faults("json", auto_settle=False)  # the provider never settles it
    conn = stack.connect(stack.new_tenant(), "json")
    txn, _ = await env.deposit(conn, "pending")
    reconciler = env.reconciler(reconciler_horizon_s=0)

    async def reported() -> bool:
        await reconciler.run_once()
        rows = stack.query("SELECT reported_at FROM reconciliations WHERE transaction_id = %s", txn)
        return bool(rows) and rows[0][0] is not None

    await until(reported, 20, "the unresolved report")
    for _ in range(3):
        await reconciler.run_once()
    assert stack.status(txn) == "pending", "never failed while the money may move"
    assert env.deps.metrics.unresolved._value.get() >= 1

    monkeypatch.setenv("PAYSTREAM_DATABASE_URL", stack.database_url)
    # The CLI runs its own event loop: give it a thread.
    result = await asyncio.to_thread(
        CliRunner().invoke, transactions, ["unresolved", "--older-than", "0"]
    )
    assert result.exit_code == 1, result.output
    assert str(txn) in result.output
