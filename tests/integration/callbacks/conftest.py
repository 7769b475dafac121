"""The callback path on real servers: the provider sandbox and the callback ingress over
HTTP (uvicorn threads), the callback worker as a real `faust` process on the broker, and a
fresh PostgreSQL database. Shared by the package's tests (a faust group join is seconds);
each test isolates itself with its own tenant and connections.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from paystream_callback_ingress import main as ingress_main
from paystream_callback_ingress.app import create_app as create_ingress
from paystream_callback_ingress.settings import CallbackIngressSettings
from paystream_config import DatabaseSettings
from paystream_core.ids import attempt_idempotency_key
from paystream_gateways import signing
from paystream_gateways.connections import ConnectionRepository
from paystream_gateways.registry import default_registry
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.topics import ensure_topics
from paystream_sandbox import jsonpay_api, soapbank_api, stripe_api
from paystream_sandbox.app import create_app as create_sandbox
from paystream_sandbox.client import SandboxAdmin
from paystream_sandbox.core import Payment, PaymentStatus
from paystream_sandbox.settings import SandboxSettings
from paystream_storage.db import create_engine, sessionmaker
from tests.integration.gateways.support import serve_app
from tests.support.asgi_server import free_port
from tests.support.databases import fresh_database, libpq
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[3]
GATEWAY_CODES = {"stripe": "stripe", "json": "jsonpay", "soap": "soapbank"}
SIGNATURE_HEADERS = {
    "stripe": "Stripe-Signature",
    "json": "JsonPay-Signature",
    "soap": "X-SoapBank-Signature",
}
MEDIA = {"stripe": "application/json", "json": "application/json", "soap": "text/xml"}
RENDER = {
    "stripe": stripe_api.render_event,
    "json": jsonpay_api.render_event,
    "soap": soapbank_api.render_event,
}
CONSUMER = "callback-worker"


@dataclass(frozen=True)
class Conn:
    tenant: uuid.UUID
    provider: str
    id: uuid.UUID
    credentials: dict[str, str] = field(repr=False)

    @property
    def code(self) -> str:
        return GATEWAY_CODES[self.provider]

    @property
    def path(self) -> str:
        return f"/v1/callbacks/{self.code}/{self.id}"

    @property
    def secret(self) -> str:
        return self.credentials["webhook_secret"]

    @property
    def account(self) -> str:
        return self.credentials.get("merchant_id") or self.credentials["api_key"]


@dataclass(frozen=True)
class Callback:
    event_id: str
    body: bytes
    provider: str

    def headers(self, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
        return {
            "Content-Type": MEDIA[self.provider],
            SIGNATURE_HEADERS[self.provider]: signing.sign(secret, self.body, timestamp=timestamp),
        }


@dataclass(frozen=True)
class Pending:
    """A transaction left `pending` by the gateway worker, as the database holds it."""

    id: uuid.UUID
    reference: str  # our attempt key
    provider_reference: str
    account: str
    amount_minor: int


@dataclass
class Stack:
    database_url: str
    kafka_bootstrap: str
    topic_prefix: str
    ingress_url: str
    sandbox: SandboxAdmin
    ring: KeyRing
    keyring_settings: KeyRingSettings
    worker_health: str
    worker_log: Path

    # --- database -------------------------------------------------------------------

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            return conn.execute(sql, args).fetchall()

    def new_tenant(self) -> uuid.UUID:
        tenant = uuid.uuid4()
        self.query(
            "INSERT INTO tenants (id, name) VALUES (%s, %s) RETURNING id",
            tenant,
            f"t-{tenant.hex[:12]}",
        )
        return tenant

    def connect(self, tenant: uuid.UUID, provider: str, *, webhook: bool = False) -> Conn:
        """A sandbox account and its paystream connection. `webhook`: the sandbox sends its
        own callbacks to the ingress (off by default, so a test's callbacks are the only)."""
        cid = uuid.uuid4()
        url = f"{self.ingress_url}/v1/callbacks/{GATEWAY_CODES[provider]}/{cid}"
        creds = self.sandbox.provision(provider, webhook_url=url if webhook else None)

        async def add() -> None:
            engine = create_engine(DatabaseSettings(database_url=self.database_url))
            try:
                async with sessionmaker(engine)() as session, session.begin():
                    repo = ConnectionRepository(session, self.ring, default_registry())
                    await repo.add(
                        tenant,
                        GATEWAY_CODES[provider],
                        f"c-{cid.hex[:8]}",
                        creds,
                        connection_id=cid,
                    )
            finally:
                await engine.dispose()

        _run(add())
        return Conn(tenant, provider, cid, creds)

    def seed_pending(
        self,
        conn: Conn,
        *,
        amount_minor: int = 1000,
        txn: uuid.UUID | None = None,
        provider_reference: str | None = None,
    ) -> Pending:
        """A deposit in `pending` with its attempt, exactly as the gateway worker leaves one
        after the provider answered `pending`."""
        txn, account = txn or uuid.uuid4(), f"acc-{secrets.token_hex(4)}"
        key = attempt_idempotency_key(txn, 1)
        ref = provider_reference or f"ref_{secrets.token_hex(8)}"
        self.query(
            "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, %s, 'DE') RETURNING id",
            conn.tenant,
            account,
        )
        self.query(
            "INSERT INTO transactions (id, tenant_id, account_id, type, status, version,"
            " amount_minor, currency, country, idempotency_key, payload_hash, gateway_code,"
            " provider_reference) VALUES (%s, %s, %s, 'deposit', 'pending', 3, %s, 'EUR', 'DE',"
            " %s, 'h', %s, %s) RETURNING id",
            txn,
            conn.tenant,
            account,
            amount_minor,
            f"k-{txn}",
            conn.code,
            ref,
        )
        self.query(
            "INSERT INTO attempts (id, tenant_id, transaction_id, seq, gateway_code,"
            " connection_id, idempotency_key, status, provider_reference)"
            " VALUES (%s, %s, %s, 1, %s, %s, %s, 'pending', %s) RETURNING id",
            uuid.uuid4(),
            conn.tenant,
            txn,
            conn.code,
            conn.id,
            key,
            ref,
        )
        return Pending(txn, key, ref, account, amount_minor)

    def status(self, txn: uuid.UUID) -> str:
        return str(self.query("SELECT status FROM transactions WHERE id = %s", txn)[0][0])

    def outcomes(self, txn: uuid.UUID) -> list[str]:
        rows = self.query(
            "SELECT event_type FROM outbox WHERE data->>'transaction_id' = %s ORDER BY id",
            str(txn),
        )
        return [str(t).removeprefix("paystream.transaction.").removesuffix(".v1") for (t,) in rows]

    def available(self, tenant: uuid.UUID, account: str) -> int:
        rows = self.query(
            "SELECT available_minor FROM balances WHERE tenant_id = %s AND account_id = %s",
            tenant,
            account,
        )
        return int(rows[0][0]) if rows else 0

    def ledger_sum(self, txn: uuid.UUID) -> int:
        rows = self.query(
            "SELECT coalesce(sum(amount_minor), 0) FROM ledger_entries WHERE transaction_id = %s",
            txn,
        )
        return int(rows[0][0])

    def processed(self, conn: Conn, event_id: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM inbox WHERE consumer = %s AND message_id = %s",
            CONSUMER,
            f"{conn.id}:{event_id}",
        )
        return bool(rows)

    # --- callbacks ------------------------------------------------------------------

    def callback(
        self,
        conn: Conn,
        *,
        payment_id: str,
        reference: str | None,
        status: PaymentStatus,
        failure_code: str | None = None,
        amount_minor: int = 1000,
    ) -> Callback:
        """A provider callback in the provider's real wire format (the sandbox's renderer)."""
        payment = Payment(
            id=payment_id,
            provider=conn.provider,
            account=conn.account,
            kind="deposit",
            reference=reference,
            idempotency_key=reference,
            amount_minor=amount_minor,
            currency="EUR",
            status=status,
            created=int(time.time()),
            country="DE",
            payment_method="pm_card_visa",
            metadata={"paystream_reference": reference} if reference else {},
            failure_code=failure_code,
            redirect_url="https://bank.example/3ds" if status == "action_required" else None,
        )
        event_id, _, body = RENDER[conn.provider](payment)
        return Callback(event_id, body, conn.provider)

    def worker_handled(self) -> int:
        """Callback records the worker process has finished (from its /metrics)."""
        text = httpx.get(f"{self.worker_health}/metrics", timeout=5).text
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("paystream_callback_worker_callbacks_total{")
            )
        )


def _run(coro: Any) -> Any:
    """Run a coroutine from sync code, whether or not this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[Any] = []
    import threading

    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return result[0]


def _python_path() -> str:
    extra = [str(ROOT / "services" / p / "src") for p in ("callback_ingress", "provider_reports")]
    return os.pathsep.join([*extra, *sys.path])


@pytest.fixture(scope="session")
def stack(kafka_bootstrap: str, primary_pg: str) -> Iterator[Stack]:
    entry = new_key_entry("cb1")
    keyring_settings = KeyRingSettings(keyring=SecretStr(entry), active_key_id="cb1")
    ring = KeyRing.from_settings(keyring_settings)
    prefix = f"cb{uuid.uuid4().hex[:10]}"
    with fresh_database(primary_pg) as database_url:
        with psycopg.connect(libpq(database_url)) as conn:
            conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
            for provider, code in GATEWAY_CODES.items():
                conn.execute(
                    "INSERT INTO gateways (code, provider, name, currencies)"
                    " VALUES (%s, %s, %s, '{EUR}')",
                    (code, provider, code),
                )
                for kind in ("deposit", "withdrawal"):
                    conn.execute(
                        "INSERT INTO gateway_countries (gateway_code, country, transaction_type,"
                        " priority) VALUES (%s, 'DE', %s, 1)",
                        (code, kind),
                    )
        ingress_settings = CallbackIngressSettings(
            kafka_bootstrap=kafka_bootstrap,
            database_url=database_url,
            topic_prefix=prefix,
            topic_partitions=3,
            callback_publish_timeout_ms=5000,
            callback_max_body_bytes=16_384,
        )
        ensure_topics(ingress_settings)
        deps = ingress_main.build_deps(ingress_settings, ring)
        health_port = free_port()
        log_path = Path(tempfile.mkdtemp(prefix="paystream-cbw-")) / "callback-worker.log"
        env = {
            **os.environ,
            **keyring_settings.environment_with_key_material(),
            "PYTHONPATH": _python_path(),
            "PAYSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "PAYSTREAM_DATABASE_URL": database_url,
            "PAYSTREAM_TOPIC_PREFIX": prefix,
            "PAYSTREAM_CALLBACK_WORKER_GROUP": f"{prefix}-callback-worker",
            "PAYSTREAM_CALLBACK_WORKER_WEB_PORT": str(health_port),
            "PAYSTREAM_CALLBACK_PARKED_SWEEP_S": "0.2",
            "PAYSTREAM_CALLBACK_PARKED_RETRY_BASE_S": "0.2",
            "PAYSTREAM_CALLBACK_PARKED_RETRY_MAX_S": "0.5",
        }
        sandbox_settings = SandboxSettings(callback_delay_ms=10, settle_delay_ms=100)
        with (
            serve_app(create_sandbox(sandbox_settings)) as sandbox_url,
            serve_app(create_ingress(deps)) as ingress_url,
            SandboxAdmin(sandbox_url) as admin,
            log_path.open("wb") as log_file,
        ):
            worker = subprocess.Popen(
                [sys.executable, "-m", "paystream_provider_reports.main", "callback"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            health = f"http://127.0.0.1:{health_port}"
            try:

                def assigned() -> bool:
                    assert worker.poll() is None, log_path.read_text()[-4000:]
                    try:
                        body = httpx.get(f"{health}/healthz", timeout=1).json()
                    except httpx.HTTPError:
                        return False
                    return int(body["assigned_partitions"]) > 0

                wait_for(assigned, timeout=60, interval=0.2, what="callback worker partitions")
                yield Stack(
                    database_url=database_url,
                    kafka_bootstrap=kafka_bootstrap,
                    topic_prefix=prefix,
                    ingress_url=ingress_url,
                    sandbox=admin,
                    ring=ring,
                    keyring_settings=keyring_settings,
                    worker_health=health,
                    worker_log=log_path,
                )
            finally:
                worker.terminate()
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(5)


@pytest.fixture
async def client(stack: Stack) -> Any:
    async with httpx.AsyncClient(base_url=stack.ingress_url, timeout=30) as http:
        yield http
