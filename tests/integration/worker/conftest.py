"""The gateway worker's handler on a real PostgreSQL, with scripted gateways.

Provider behaviour is scripted here so each fallback rule can be forced exactly; the
end-to-end tests run the same code against the provider sandbox over HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from paystream_core.ids import payload_hash, transaction_id
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.resilience import Breakers
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.cloudevents_codec import Event, encode
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from paystream_streams.records import RawRecord
from tests.support.databases import libpq
from tests.support.scripted_gateways import (
    CollectedDeadLetters,
    Lookup,
    Script,
    ScriptedGateway,
    never,
)


@dataclass
class WorkerEnv:
    deps: WorkerDeps
    database_url: str
    tenant: uuid.UUID
    gateways: dict[str, ScriptedGateway]
    dead: CollectedDeadLetters
    registry: SchemaRegistry
    offset: int = 0

    def gateway(self, name: str, script: Script) -> ScriptedGateway:
        self.gateways[name].script = script
        return self.gateways[name]

    def command(
        self,
        kind: str = "deposit",
        *,
        key: str | None = None,
        country: str = "DE",
        amount_minor: int = 1000,
        account: str = "acc-1",
        tenant: uuid.UUID | None = None,
        **extra: Any,
    ) -> tuple[uuid.UUID, RawRecord]:
        tenant = tenant or self.tenant
        key = key or str(uuid.uuid4())
        data: dict[str, Any] = {
            "transaction_id": str(transaction_id(tenant, key)),
            "tenant_id": str(tenant),
            "idempotency_key": key,
            "account_id": account,
            "country": country,
            "amount_minor": amount_minor,
            "currency": "EUR",
            "requested_at": "2026-01-01T00:00:00Z",
            **extra,
        }
        data["payload_hash"] = payload_hash(data)
        if kind == "withdrawal":
            sealed = self.deps.keyring.seal(
                tenant, transaction_id(tenant, key), b'{"holder_name": "A", "iban": "X"}'
            )
            import base64

            data["destination"] = {
                "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
                "key_id": sealed.key_id,
                "masked": "DE89 **** 3000",
            }
        event = Event(
            id=str(uuid.uuid4()),
            source="/test",
            type=f"paystream.{kind}.requested.v1",
            time=datetime.now(UTC),
            tenant_id=str(tenant),
            partition_key=account,
            data=data,
        )
        record = encode(event, self.registry)
        self.offset += 1
        raw = RawRecord("commands", 0, self.offset, record.key, record.value, record.headers)
        return transaction_id(tenant, key), raw

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            return conn.execute(sql, args).fetchall()

    def status(self, txn: uuid.UUID) -> str:
        return str(self.query("SELECT status FROM transactions WHERE id = %s", txn)[0][0])

    def outcomes(self, txn: uuid.UUID) -> list[tuple[str, int]]:
        rows = self.query(
            "SELECT event_type, (data->>'version')::int FROM outbox"
            " WHERE data->>'transaction_id' = %s ORDER BY id",
            str(txn),
        )
        return [(t.removeprefix("paystream.transaction.").removesuffix(".v1"), v) for t, v in rows]

    def balance(self, account: str = "acc-1") -> tuple[int, int]:
        rows = self.query(
            "SELECT available_minor, held_minor FROM balances WHERE account_id = %s", account
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


@pytest.fixture
async def worker_env(primary_database_url: str) -> AsyncIterator[WorkerEnv]:
    tenant = uuid.uuid4()
    connections = {name: uuid.uuid4() for name in ("gw_a", "gw_b", "gw_c")}
    with psycopg.connect(libpq(primary_database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'worker-test')", (tenant,))
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France')")
        for name, conn_id in connections.items():
            conn.execute(
                "INSERT INTO gateways (code, provider, name, currencies)"
                " VALUES (%s, 'json', %s, '{EUR}')",
                (name, name),
            )
            conn.execute(
                "INSERT INTO connections (id, tenant_id, gateway_code, code,"
                " credentials_ciphertext, credentials_key_id)"
                " VALUES (%s, %s, %s, 'main', '\\x00', 'k')",
                (conn_id, tenant, name),
            )
        for kind in ("deposit", "withdrawal"):
            for priority, name in enumerate(("gw_a", "gw_b", "gw_c"), start=1):
                conn.execute(
                    "INSERT INTO gateway_countries (gateway_code, country, transaction_type,"
                    " priority) VALUES (%s, 'DE', %s, %s)",
                    (name, kind, priority),
                )
    gateways = {name: ScriptedGateway(name, never) for name in connections}
    ring = KeyRing.from_settings(
        KeyRingSettings(keyring=SecretStr(new_key_entry("t1")), active_key_id="t1")
    )
    settings = GatewayWorkerSettings(
        kafka_bootstrap="127.0.0.1:1",
        database_url=primary_database_url,
        worker_retry_attempts=3,
        worker_retry_base_s=0.001,
        worker_retry_max_s=0.01,
        breaker_fail_max=3,
        breaker_reset_timeout_s=0.5,
    )
    dead = CollectedDeadLetters()
    registry = SchemaRegistry()
    store = PgPaymentStore(HotPool(settings), registry)
    deps = WorkerDeps(
        settings=settings,
        store=store,
        registry=registry,
        gateways=Lookup({connections[n]: g for n, g in gateways.items()}),
        keyring=ring,
        dead_letters=dead,
        breakers=Breakers(settings.breaker_fail_max, settings.breaker_reset_timeout_s),
    )
    yield WorkerEnv(deps, primary_database_url, tenant, gateways, dead, registry)
    await store.close()
