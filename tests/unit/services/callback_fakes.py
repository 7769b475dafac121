"""What the callback worker and the reconciler tests share: a scripted provider whose
callbacks are small JSON documents, a real `GatewayManager` over an in-memory connection
source, and a `FakeStore` seeded the way the gateway worker leaves transactions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from paystream_core.ids import attempt_idempotency_key
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_gateways.connections import ConnectionRecord
from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import CallbackRejected
from paystream_gateways.manager import GatewayManager
from paystream_gateways.protocol import (
    ActionRequired,
    CallbackEvent,
    ClientOptions,
    Declined,
    Gateway,
    Outcome,
    PaymentRequest,
    Pending,
    StatusQuery,
    StatusResult,
    Succeeded,
)
from paystream_gateways.registry import Registry
from paystream_gateways.specs import ProviderSpec
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.callbacks import CallbackReceived
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.schemas import SchemaRegistry
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.handler import process
from paystream_streams.records import RawRecord
from tests.support.fake_store import FakeStore

REGISTRY = SchemaRegistry()
RING = KeyRing.from_settings(
    KeyRingSettings(keyring=SecretStr(new_key_entry("cb1")), active_key_id="cb1")
)
PROVIDER = "scripted"
REDIRECT = "https://bank.example/3ds"


def body(
    event_id: str,
    status: str,
    *,
    payment_id: str,
    reference: str | None = None,
    kind: str = "deposit",
    code: str = "do_not_honor",
) -> bytes:
    """A callback of the scripted provider (status: succeeded | pending | action_required |
    declined; anything else is an event type we do not use)."""
    data = {"id": event_id, "status": status, "payment_id": payment_id}
    return json.dumps({**data, "reference": reference, "kind": kind, "code": code}).encode()


@dataclass
class ScriptedProvider:
    """Parses `body()` callbacks; answers status lookups from `lookup`."""

    lookup: Callable[[StatusQuery], StatusResult] | None = None
    queries: list[StatusQuery] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return PROVIDER

    async def deposit(self, request: PaymentRequest) -> Outcome:
        raise AssertionError("no payments here")

    async def withdraw(self, request: PaymentRequest) -> Outcome:
        raise AssertionError("no payments here")

    async def status(self, query: StatusQuery) -> StatusResult:
        self.queries.append(query)
        assert self.lookup is not None, "unexpected status lookup"
        return self.lookup(query)

    def verify_callback(self, headers: Any, body: bytes, *, now: float | None = None) -> None:
        raise NotImplementedError  # the ingress verifies; the worker only parses

    def parse_callback(self, body: bytes) -> CallbackEvent:
        try:
            data = json.loads(body)
            status, ref = data["status"], data["payment_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CallbackRejected("malformed", f"unreadable callback: {exc}") from None
        outcomes: dict[str, Outcome] = {
            "succeeded": Succeeded(ref),
            "pending": Pending(ref),
            "action_required": ActionRequired(ref, REDIRECT),
            "declined": Declined(data["code"], "declined by the provider", False, ref),
        }
        if status not in outcomes:
            raise CallbackRejected("unsupported", f"event type {status}")
        return CallbackEvent(
            provider=PROVIDER,
            event_id=data["id"],
            event_type=f"payment.{status}",
            kind=TransactionType(data["kind"]),
            provider_reference=ref,
            reference=data["reference"],
            outcome=outcomes[status],
            occurred_at=datetime.now(UTC),
        )

    async def aclose(self) -> None:
        return None


@dataclass
class Connections:
    """`paystream_gateways.manager.ConnectionSource` over a dict."""

    records: dict[uuid.UUID, ConnectionRecord] = field(default_factory=dict)

    def add(self, tenant: uuid.UUID, gateway: str, connection_id: uuid.UUID) -> None:
        now = datetime.now(UTC)
        self.records[connection_id] = ConnectionRecord(
            id=connection_id,
            tenant_id=tenant,
            gateway_code=gateway,
            provider=PROVIDER,
            code="main",
            enabled=True,
            version=1,
            created_at=now,
            updated_at=now,
            sealed=RING.seal(tenant, connection_id, b"{}"),
        )

    async def load(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> ConnectionRecord | None:
        record = self.records.get(connection_id)
        return record if record is not None and record.tenant_id == tenant_id else None

    async def load_by_code(
        self, tenant_id: uuid.UUID, gateway_code: str, code: str
    ) -> ConnectionRecord | None:
        for record in self.records.values():
            if (record.tenant_id, record.gateway_code, record.code) == (
                tenant_id,
                gateway_code,
                code,
            ):
                return record
        return None


@dataclass
class CollectedDeadLetters:
    records: list[tuple[RawRecord, str]] = field(default_factory=list)

    async def send(self, record: RawRecord, reason: str) -> None:
        self.records.append((record, reason))


@dataclass
class Seeded:
    txn: uuid.UUID
    reference: str  # our key of the newest attempt
    provider_reference: str
    account: str


@dataclass
class CallbackEnv:
    store: FakeStore
    provider: ScriptedProvider
    connections: Connections
    deps: CallbackDeps
    dead: CollectedDeadLetters
    tenant: uuid.UUID
    conn: uuid.UUID  # the tenant's connection at gw_a
    offset: int = 0

    def add_connection(self, gateway: str) -> uuid.UUID:
        connection_id = self.store.add_connection(self.tenant, gateway)
        self.connections.add(self.tenant, gateway, connection_id)
        return connection_id

    def seed(
        self,
        status: Status = Status.PENDING,
        *,
        kind: TransactionType = TransactionType.DEPOSIT,
        amount_minor: int = 1000,
        attempt: AttemptStatus = AttemptStatus.PENDING,
        txn: uuid.UUID | None = None,
        provider_reference: str | None = None,
    ) -> Seeded:
        """A transaction at version 3 with one attempt at gw_a, as the gateway worker leaves
        it; a withdrawal's amount is held (funded first)."""
        txn = txn or uuid.uuid4()
        account = f"acc-{txn.hex[:8]}"
        reference = attempt_idempotency_key(txn, 1)
        ref = provider_reference or f"pi_{txn.hex[:12]}"
        self.store.put_transaction(
            TransactionRecord(
                id=txn,
                tenant_id=self.tenant,
                account_id=account,
                type=kind,
                status=status,
                version=3,
                amount_minor=amount_minor,
                currency="EUR",
                country="DE",
                idempotency_key=f"k-{txn}",
                payload_hash="h",
                gateway_code="gw_a",
                provider_reference=ref,
            )
        )
        self.store.put_attempt(
            AttemptRecord(
                id=uuid.uuid4(),
                tenant_id=self.tenant,
                transaction_id=txn,
                seq=1,
                gateway_code="gw_a",
                connection_id=self.conn,
                idempotency_key=reference,
                status=attempt,
                provider_reference=ref if attempt != AttemptStatus.AMBIGUOUS else None,
            )
        )
        if kind == TransactionType.WITHDRAWAL:
            self.store.set_balance(self.tenant, account, available=500, held=amount_minor)
        return Seeded(txn, reference, ref, account)

    def record(self, payload: bytes, *, connection: uuid.UUID | None = None) -> RawRecord:
        callback = CallbackReceived(
            gateway="gw_a",
            connection_id=connection or self.conn,
            tenant_id=self.tenant,
            received_at=datetime.now(UTC),
            body=payload,
            headers={"content-type": "application/json"},
        )
        event = callback.to_event(source="/paystream/callback-ingress", partition_key="p")
        encoded = encode(event, REGISTRY)
        self.offset += 1
        return RawRecord("callbacks", 0, self.offset, encoded.key, encoded.value, encoded.headers)

    async def run(self, *records: RawRecord) -> list[str]:
        return await process(self.deps, list(records))


def callback_env() -> CallbackEnv:
    store = FakeStore(REGISTRY)
    tenant = store.add_tenant()
    store.add_route("gw_a", priority=1)
    provider = ScriptedProvider()

    def factory(credentials: Credentials, options: ClientOptions) -> Gateway:
        return provider

    connections = Connections()
    manager = GatewayManager(connections, RING, Registry([ProviderSpec(PROVIDER, factory, ())]))
    dead = CollectedDeadLetters()
    deps = CallbackDeps(
        store=store,
        registry=REGISTRY,
        gateways=manager,
        connections=connections,
        dead_letters=dead,
    )
    env = CallbackEnv(store, provider, connections, deps, dead, tenant, uuid.uuid4())
    env.conn = env.add_connection("gw_a")
    return env
