"""`paystream dev`: the whole stack on one machine, on embedded defaults.

Starts (or reuses, when PAYSTREAM_KAFKA_BOOTSTRAP / PAYSTREAM_DATABASE_URL are set) Kafka
and PostgreSQL, migrates, creates topics, seeds a demo tenant, routing and sandbox
connections, runs every paystream service as a supervised child process (restarted when
it dies, as an orchestrator would), writes `.paystream/dev.env`, and on Ctrl-C or SIGTERM
stops everything it started.

Supervision after startup: services and the embedded PostgreSQL are restarted with
backoff (1 s doubling to 30 s, reset once up for a minute), never given up on: a crash
loop is almost always a dependency being down, and tearing the stack down would also take
the in-memory broker and everything in flight with it. A child dying *during* startup is
a `DevStartError` with its log tail. The embedded Kafka broker is the exception: it holds
everything in memory, so if it dies the stack stops loudly (see `_kafka_lost`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy.ext.asyncio import AsyncSession

from paystream_cli import demo_connections
from paystream_cli.demo_seed import seed_routing
from paystream_cli.infra import open_infra
from paystream_config import DatabaseSettings, KafkaSettings
from paystream_devinfra import ChildProcess, EmbeddedKafka, EmbeddedPostgres, Supervisor
from paystream_keyring import KeyRing, KeyRingSettings, ensure_dev_keyring
from paystream_messaging.topics import ensure_topics
from paystream_storage import migrate
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.tenants import (
    IssuedKey,
    create_tenant,
    issue_api_key,
    revoke_api_keys,
    tenant_by_name,
)

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
HTTP_PORTS = {
    name: int(os.environ.get(f"PAYSTREAM_DEV_{name}_PORT", default))
    for name, default in (("API", 8000), ("CALLBACK", 8001), ("SANDBOX", 8002))
}
URLS = {name: f"http://127.0.0.1:{port}" for name, port in HTTP_PORTS.items()}


@dataclass
class Service:
    name: str
    args: list[str]
    ready_url: str | None = None
    child: ChildProcess | None = None


def services() -> list[Service]:
    """In start order. The sandbox comes first: the demo connections point at it."""
    return [
        Service(
            "sandbox",
            ["sandbox", "--port", str(HTTP_PORTS["SANDBOX"])],
            f"{URLS['SANDBOX']}/_sandbox/health",
        ),
        Service("callback-ingress", ["serve", "callback-ingress"], f"{URLS['CALLBACK']}/readyz"),
        Service("callback-worker", ["worker", "callback"]),
        Service("ingest-api", ["serve", "ingest-api"], f"{URLS['API']}/healthz"),
        Service("gateway-worker", ["worker", "gateway"]),
        Service("reconciler", ["worker", "reconciler"]),
        Service("relay", ["worker", "relay"]),
    ]


@dataclass(frozen=True)
class DevStack:
    kafka_bootstrap: str
    database_url: str
    topic_prefix: str
    demo: IssuedKey


class DevStartError(RuntimeError):
    pass


async def _owner_session_run(db: DatabaseSettings, action: object) -> object:
    engine = create_engine(db)
    try:
        async with sessionmaker(engine)() as session, session.begin():
            return await action(session)  # type: ignore[operator]
    finally:
        await engine.dispose()


async def _seed(session: AsyncSession) -> IssuedKey:
    """Routing config plus the demo tenant; a fresh demo key each start (old ones revoked)."""
    await seed_routing(session)
    tenant = await tenant_by_name(session, DEMO_TENANT)
    if tenant is None:
        tenant = await create_tenant(session, DEMO_TENANT)
    await revoke_api_keys(session, tenant.id)
    return await issue_api_key(session, tenant.id)


def write_dev_env(path: Path, stack: DevStack, running: list[str]) -> None:
    lines = [
        "# Written by `paystream dev`; valid while it runs.",
        f"PAYSTREAM_KAFKA_BOOTSTRAP={stack.kafka_bootstrap}",
        f"PAYSTREAM_DATABASE_URL={stack.database_url}",
        f"PAYSTREAM_TOPIC_PREFIX={stack.topic_prefix}",
        f"PAYSTREAM_DEMO_TENANT_ID={stack.demo.tenant_id}",
        f"PAYSTREAM_DEMO_API_KEY={stack.demo.api_key}",
        f"# Services running: {', '.join(running)}.",
    ]
    lines += [f"PAYSTREAM_{name}_URL={url}" for name, url in URLS.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)  # holds an API key
    tmp.replace(path)


def run(home: Path) -> int:
    """Run the stack until a signal; returns the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("dev: signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    env_file = home / "dev.env"
    env_file.unlink(missing_ok=True)

    with contextlib.ExitStack() as stack:
        infra = open_infra(stack, home)
        if stop.is_set():
            return 0
        kafka_settings = KafkaSettings(kafka_bootstrap=infra.kafka_bootstrap)
        db = DatabaseSettings(database_url=infra.database_url)
        migrate.upgrade(db.sqlalchemy_url)
        ensure_topics(kafka_settings)
        demo = asyncio.run(_owner_session_run(db, _seed))
        assert isinstance(demo, IssuedKey)
        dev = DevStack(infra.kafka_bootstrap, infra.database_url, kafka_settings.topic_prefix, demo)
        keyring_settings = ensure_dev_keyring(home)
        env = {
            **os.environ,
            **keyring_settings.environment_with_key_material(),
            "PAYSTREAM_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "PAYSTREAM_DATABASE_URL": infra.database_url,
            "PAYSTREAM_TOPIC_PREFIX": kafka_settings.topic_prefix,
            "PAYSTREAM_INGEST_PORT": str(HTTP_PORTS["API"]),
            "PAYSTREAM_CALLBACK_PORT": str(HTTP_PORTS["CALLBACK"]),
            # Demo-friendly: look up what is still pending after 10 s, not minutes.
            "PAYSTREAM_RECONCILER_PENDING_AGE_S": os.environ.get(
                "PAYSTREAM_RECONCILER_PENDING_AGE_S", "10"
            ),
        }
        running = services()
        # Before the brokers and the database go (the stack unwinds in reverse order).
        stack.callback(_stop_all, running)
        for service in running:
            _start(service, env, logs)
            if service.ready_url:
                _wait_ready(service, stop)
            if service.name == "sandbox" and not stop.is_set():
                _provision(db, keyring_settings, demo.tenant_id)
        if stop.is_set():
            return 0
        write_dev_env(env_file, dev, [s.name for s in running])
        stack.callback(env_file.unlink, missing_ok=True)
        _print_summary(dev, running, env_file, logs)

        supervisor = Supervisor(log=log)
        if infra.postgres is not None:  # first: the services need it
            supervisor.watch(PostgresUnit(infra.postgres, stop))
        for service in running:
            supervisor.watch(ServiceUnit(service, env, logs))
        while not stop.wait(0.5):
            if infra.kafka is not None and infra.kafka.poll() is not None:
                print(_kafka_lost(infra.kafka), file=sys.stderr, flush=True)
                return 1
            supervisor.step()
    log.info("dev: stopped")
    return 0


class ServiceUnit:
    """A paystream service as the supervisor sees it."""

    def __init__(self, service: Service, env: dict[str, str], logs: Path) -> None:
        self._service = service
        self._env = env
        self._logs = logs

    @property
    def name(self) -> str:
        return self._service.name

    def poll(self) -> int | None:
        assert self._service.child is not None
        return self._service.child.poll()

    def restart(self) -> str:
        if self._service.child is not None:
            # Already dead: this reaps it, closes its log handle, and kills anything its
            # process group left behind.
            self._service.child.stop(5.0)
        _start(self._service, self._env, self._logs)
        assert self._service.child is not None
        return f"pid {self._service.child.pid}"

    def log_tail(self, lines: int) -> str:
        assert self._service.child is not None
        return self._service.child.log_tail(lines)


class PostgresUnit:
    """The embedded PostgreSQL dev started, restarted on the same data directory and port
    (the URL every service was given) after running its own crash recovery."""

    name = "postgresql"

    def __init__(self, pg: EmbeddedPostgres, stop: threading.Event) -> None:
        self._pg = pg
        self._stop = stop

    def poll(self) -> int | None:
        return self._pg.poll()

    def restart(self) -> str:
        # Restarting blocks the loop until the server is ready (crash recovery included);
        # `abort=stop` keeps Ctrl-C prompt meanwhile.
        report = self._pg.restart(abort=self._stop)
        return f"{report.describe()}; pid {self._pg.pid}, port {self._pg.port}"

    def log_tail(self, lines: int) -> str:
        return self._pg.log_tail(lines)


def _kafka_lost(kafka: EmbeddedKafka) -> str:
    """Why dev stops when the embedded broker dies, instead of restarting it.

    tansu runs with in-memory storage: a restarted broker would be empty. Commands accepted
    but not yet consumed, outcome events already marked published by the relay, and every
    consumer group's committed offsets would be gone, while the services carried on as if
    nothing happened. Stopping loudly is the honest answer; `paystream dev` starts afresh.
    """
    assert kafka.process is not None
    return kafka.process.describe_failure(
        "died; it keeps topics, records and consumer offsets in memory only, so they are "
        "lost and a restarted broker would be empty. Stopping the stack: run `paystream dev` "
        "again (PostgreSQL keeps its data)",
        "the embedded Kafka broker (tansu)",
    )


def _provision(db: DatabaseSettings, keyring_settings: KeyRingSettings, tenant: uuid.UUID) -> None:
    ring = KeyRing.from_settings(keyring_settings)

    async def action(session: AsyncSession) -> dict[str, uuid.UUID]:
        return await demo_connections.provision(
            session, ring, tenant, sandbox_url=URLS["SANDBOX"], callback_url=URLS["CALLBACK"]
        )

    asyncio.run(_owner_session_run(db, action))


def _start(service: Service, env: dict[str, str], logs: Path) -> None:
    service.child = ChildProcess(
        [sys.executable, "-m", "paystream_cli.main", *service.args],
        log_path=logs / f"{service.name}.log",
        name=service.name,
        env=env,
    )
    service.child.start()


def _stop(service: Service) -> None:
    if service.child is not None:
        service.child.stop(15.0)


def _stop_all(running: list[Service]) -> None:
    """SIGTERM every service at once and wait for them all, as an orchestrator does: one
    after the other, the workers' graceful shutdowns added up to 7-9 s per stop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(running) or 1) as pool:
        for done in pool.map(_stop, running):
            del done


def _wait_ready(service: Service, stop: threading.Event) -> None:
    """Until its URL answers 200; a child that dies first is a startup failure."""
    assert service.child is not None
    assert service.ready_url is not None
    deadline = time.monotonic() + 60
    while not stop.is_set():
        if service.child.poll() is not None:
            raise DevStartError(
                service.child.describe_failure("exited during startup", service.name)
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(service.ready_url, timeout=1) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise DevStartError(
                service.child.describe_failure(f"not ready at {service.ready_url}", service.name)
            )
        stop.wait(0.1)


def _print_summary(dev: DevStack, running: list[Service], env_file: Path, logs: Path) -> None:
    rows = [
        ("kafka", dev.kafka_bootstrap),
        ("postgresql", dev.database_url),
        ("topics", f"{dev.topic_prefix}.{{commands,callbacks,outcomes,dead-letters}}"),
        ("demo tenant", str(dev.demo.tenant_id)),
        ("ingest API", URLS["API"]),
        ("sandbox", f"{URLS['SANDBOX']} (admin: /_sandbox)"),
    ]
    rows += [(s.name, f"pid {s.child.pid}, log {s.child.log_path}") for s in running if s.child]
    width = max(len(name) for name, _ in rows)
    print("paystream dev is running:", flush=True)
    for name, where in rows:
        print(f"  {name:<{width}}  {where}")
    print(f"  environment: {env_file} (source it to talk to this stack)")
    print(f"  logs:        {logs}")
    print("Ctrl-C or SIGTERM stops everything.", flush=True)
