"""A running `paystream dev` stack for end-to-end tests, and what tests do with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from tests.support.asgi_server import free_port
from tests.support.databases import libpq
from tests.support.polling import wait_for

CURRENCY = {"DE": "EUR", "FR": "EUR", "GB": "GBP", "US": "USD", "BR": "BRL", "NG": "NGN"}
TERMINAL = {"succeeded", "failed", "rejected"}


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    home: Path
    settings: dict[str, str] = field(default_factory=dict)
    # the environment `paystream dev` was started with (its settings, the test's included)
    launch_env: dict[str, str] = field(default_factory=dict)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.env["PAYSTREAM_API_URL"], timeout=30)
        self.sandbox = httpx.Client(
            base_url=self.env["PAYSTREAM_SANDBOX_URL"] + "/_sandbox", timeout=30
        )

    def env_port(self, name: str) -> int:
        """A port the stack was started with (from the process environment, not dev.env)."""
        return int(self.settings[name])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['PAYSTREAM_DEMO_API_KEY']}"}

    def deposit(
        self,
        country: str,
        *,
        account: str | None = None,
        amount: str = "10.00",
        key: str | None = None,
        metadata: dict[str, str] | None = None,
        kind: str = "deposits",
        **extra: Any,
    ) -> uuid.UUID:
        body: dict[str, Any] = {
            "account_id": account or f"acct-{uuid.uuid4().hex[:8]}",
            "country": country,
            "amount": amount,
            "currency": CURRENCY[country],
            "payment_method": "pm_card_visa",
            **extra,
        }
        if metadata:
            body["metadata"] = metadata
        headers = {**self.auth, "Idempotency-Key": key or str(uuid.uuid4())}
        response = self.client.post(f"/v1/{kind}", json=body, headers=headers)
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["transaction_id"])

    def snapshot(self, txn: uuid.UUID) -> dict[str, Any] | None:
        response = self.client.get(f"/v1/transactions/{txn}", headers=self.auth)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(
        self, txn: uuid.UUID, statuses: set[str], timeout: float = 60
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            snap = self.snapshot(txn)
            return snap if snap is not None and snap["status"] in statuses else None

        return wait_for(reached, timeout=timeout, interval=0.1, what=f"{txn} in {statuses}")

    def faults(self, provider: str, **faults: Any) -> None:
        self.sandbox.put(f"/faults/{provider}", json=faults).raise_for_status()

    def ledger(self, **filters: str) -> list[dict[str, Any]]:
        response = self.sandbox.get("/ledger", params=filters)
        response.raise_for_status()
        body = response.json()
        return list(body["data"])

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.env["PAYSTREAM_DATABASE_URL"])) as conn:
            return conn.execute(sql, args).fetchall()

    def service_pid(self, fragment: str) -> int:
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and fragment in " ".join(child.cmdline()):
                    return int(child.pid)
            except psutil.Error:  # exited while we looked
                continue
        raise AssertionError(f"no running service matching {fragment!r}")


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


@contextmanager
def running_stack(tmp: Path, **settings: str) -> Iterator[Stack]:
    """`paystream dev` on embedded servers with test-friendly timings; SIGTERM at the end.

    The stack's home (PostgreSQL's data among it) is not under pytest's `tmp`: as root the
    server runs as another user that needs o+x on every parent, and any pytest run on the
    machine resets /tmp/pytest-of-root to 0700 (a concurrent run broke initdb that way)."""
    home = Path(tempfile.mkdtemp(prefix="paystream-stack-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PAYSTREAM_KAFKA_BOOTSTRAP", "PAYSTREAM_DATABASE_URL")
    }
    # Test-friendly defaults; a test's own settings win.
    defaults = dict(
        PAYSTREAM_HOME=str(home),
        PAYSTREAM_DEV_API_PORT=str(free_port()),
        PAYSTREAM_DEV_CALLBACK_PORT=str(free_port()),
        PAYSTREAM_DEV_SANDBOX_PORT=str(free_port()),
        PAYSTREAM_BREAKER_FAIL_MAX="3",
        PAYSTREAM_BREAKER_RESET_TIMEOUT_S="3",
        PAYSTREAM_GATEWAY_READ_TIMEOUT_S="2",
        PAYSTREAM_WORKER_RETRY_ATTEMPTS="2",
        PAYSTREAM_WORKER_RETRY_BASE_S="0.05",
        PAYSTREAM_SANDBOX_TIMEOUT_HOLD_MS="3000",
        PAYSTREAM_SANDBOX_CALLBACK_DELAY_MS="50",
    )
    env.update({**defaults, **settings})
    log = (tmp / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "paystream_cli.main", "dev"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dev_env = home / "dev.env"
    try:
        started = time.monotonic()
        wait_for(lambda: dev_env.exists() or process.poll() is not None, timeout=180, what="dev")
        assert process.poll() is None, (tmp / "dev.log").read_text()[-3000:]
        print(f"\nstack up in {time.monotonic() - started:.1f}s")
        yield Stack(process, _read_env(dev_env), home, settings, env)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()
        if process.poll() is not None:  # kept when a stack could not be stopped, to look at
            if (home / "logs").is_dir():  # the services' logs stay with the test's files
                shutil.copytree(home / "logs", tmp / "logs", dirs_exist_ok=True)
            shutil.rmtree(home, ignore_errors=True)


@dataclass
class GatewayWorker:
    """A gateway worker started next to the stack's (same consumer group, same key ring)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def health(self) -> dict[str, Any] | None:
        """Its /healthz body, or None while it does not answer (starting, or gone)."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until the consumer group gave it partitions (the rebalance is then done)."""

        def assigned() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            body = self.health()
            return body is not None and int(body.get("assigned_partitions", 0)) > 0

        wait_for(assigned, timeout=timeout, interval=0.2, what=f"worker on :{self.port} assigned")


@contextmanager
def extra_gateway_worker(stack: Stack, logs: Path, **settings: str) -> Iterator[GatewayWorker]:
    """One more `paystream worker gateway` in the stack's consumer group, with its own
    health port; SIGTERM at the end. It needs the stack's keys to open the gateway
    credentials (as `paystream bench e2e --gateway-workers` does)."""
    from paystream_keyring import DEV_KEYRING_FILE, read_keyring_file

    ring = read_keyring_file(stack.home / DEV_KEYRING_FILE).environment_with_key_material()
    port = free_port()
    env = {
        **stack.launch_env,
        **stack.env,
        **ring,
        **settings,
        "PAYSTREAM_WORKER_WEB_PORT": str(port),
    }
    log_path = logs / f"gateway-worker-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "paystream_cli.main", "worker", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield GatewayWorker(process, port, log_path)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
