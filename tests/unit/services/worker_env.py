"""A gateway worker on the in-memory store with scripted gateways, for the unit tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from paystream_core.ids import payload_hash, transaction_id
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.handler import process
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.resilience import Breakers
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.commands import RequestDeposit, RequestWithdrawal, SealedDestination
from paystream_messaging.schemas import SchemaRegistry
from paystream_streams.records import RawRecord
from tests.support.fake_store import FakeStore
from tests.support.scripted_gateways import (
    CollectedDeadLetters,
    Lookup,
    Script,
    ScriptedGateway,
    never,
)

REGISTRY = SchemaRegistry()
RING = KeyRing.from_settings(
    KeyRingSettings(keyring=SecretStr(new_key_entry("t1")), active_key_id="t1")
)
DESTINATION = {"holder_name": "A", "iban": "DE89370400440532013000"}


@dataclass
class Env:
    deps: WorkerDeps
    store: FakeStore
    tenant: uuid.UUID
    gateways: dict[str, ScriptedGateway]
    connections: dict[str, uuid.UUID]
    dead: CollectedDeadLetters
    offset: int = 0

    def gateway(self, name: str, script: Script) -> ScriptedGateway:
        self.gateways[name].script = script
        return self.gateways[name]

    def command(
        self,
        kind: str = "deposit",
        *,
        key: str | None = None,
        account: str = "acc-1",
        amount_minor: int = 1000,
        country: str = "DE",
        tenant: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, RawRecord]:
        tenant = tenant or self.tenant
        key = key or str(uuid.uuid4())
        txn = transaction_id(tenant, key)
        fields: dict[str, Any] = {
            "transaction_id": txn,
            "tenant_id": tenant,
            "idempotency_key": key,
            "account_id": account,
            "country": country,
            "amount_minor": amount_minor,
            "currency": "EUR",
            "requested_at": datetime(2026, 1, 1, tzinfo=UTC),
        }
        fields["payload_hash"] = payload_hash({k: str(v) for k, v in fields.items()})
        command: RequestDeposit
        if kind == "withdrawal":
            sealed = RING.seal(tenant, txn, json.dumps(DESTINATION).encode())
            destination = SealedDestination(sealed.ciphertext, sealed.key_id, "DE89 **** 3000")
            command = RequestWithdrawal(**fields, destination=destination)
        else:
            command = RequestDeposit(**fields)
        encoded = encode(command.to_event(source="/test"), REGISTRY)
        self.offset += 1
        record = RawRecord("commands", 0, self.offset, encoded.key, encoded.value, encoded.headers)
        return txn, record

    async def run(self, *records: RawRecord) -> None:
        await process(self.deps, list(records))

    def balance(self, account: str = "acc-1") -> tuple[int, int]:
        return self.store.balance(self.tenant, account)


def make_env() -> Env:
    store = FakeStore(REGISTRY)
    tenant = store.add_tenant()
    gateways = {name: ScriptedGateway(name, never) for name in ("gw_a", "gw_b", "gw_c")}
    connections = {}
    for priority, name in enumerate(gateways, start=1):
        store.add_route(name, priority=priority)
        connections[name] = store.add_connection(tenant, name)
    settings = GatewayWorkerSettings(
        kafka_bootstrap="127.0.0.1:1",
        database_url="postgresql://x@127.0.0.1:1/x",
        worker_retry_attempts=3,
        worker_retry_base_s=0.001,
        worker_retry_max_s=0.01,
        breaker_fail_max=3,
        breaker_reset_timeout_s=1.0,
    )
    dead = CollectedDeadLetters()
    deps = WorkerDeps(
        settings=settings,
        store=store,
        registry=REGISTRY,
        gateways=Lookup({connections[n]: g for n, g in gateways.items()}),
        keyring=RING,
        dead_letters=dead,
        breakers=Breakers(settings.breaker_fail_max, settings.breaker_reset_timeout_s),
    )
    return Env(deps, store, tenant, gateways, connections, dead)
