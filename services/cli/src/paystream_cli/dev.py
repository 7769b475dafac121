"""`paystream dev`: the whole stack on one machine, on embedded defaults.

Starts (or reuses, when PAYSTREAM_KAFKA_BOOTSTRAP / PAYSTREAM_DATABASE_URL are set) Kafka
and PostgreSQL, migrates, creates topics, seeds a demo tenant and routing, runs every
paystream service as a child process, writes `.paystream/dev.env`, and on Ctrl-C or
SIGTERM stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy.ext.asyncio import AsyncSession

from paystream_cli.infra import open_infra
from paystream_config import DatabaseSettings, KafkaSettings
from paystream_config.crypto import ensure_dev_keyring
from paystream_devinfra import ChildProcess
from paystream_messaging.topics import ensure_topics
from paystream_storage import migrate
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.demo_seed import seed_routing
from paystream_storage.tenants import (
    IssuedKey,
    create_tenant,
    issue_api_key,
    revoke_api_keys,
    tenant_by_name,
)

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"

# Services that exist so far: name -> paystream arguments.
SERVICES: dict[str, list[str]] = {
    "relay": ["worker", "relay"],
    "ingest-api": ["serve", "ingest-api"],
}

# Where the HTTP services listen (the ingest API, callback ingress and provider sandbox
# arrive with their own issues; the URLs are fixed now so dev.env keeps one shape).
HTTP_PORTS = {
    name: int(os.environ.get(f"PAYSTREAM_DEV_{name}_PORT", default))
    for name, default in (("API", 8000), ("CALLBACK", 8001), ("SANDBOX", 8002))
}
# Service -> the URL that answers once it is ready.
READY_URLS = {"ingest-api": f"http://127.0.0.1:{HTTP_PORTS['API']}/healthz"}


@dataclass(frozen=True)
class DevStack:
    kafka_bootstrap: str
    database_url: str
    topic_prefix: str
    demo: IssuedKey


async def _seed_demo(db: DatabaseSettings) -> IssuedKey:
    """Routing config plus the demo tenant; a fresh demo key each start (old ones revoked)."""
    engine = create_engine(db)
    try:
        async with sessionmaker(engine)() as session, session.begin():
            return await _seed(session)
    finally:
        await engine.dispose()


async def _seed(session: AsyncSession) -> IssuedKey:
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
        f"# Services running: {', '.join(running)}. The callback and sandbox URLs are reserved",
        "# for services that are not part of the stack yet.",
    ]
    lines += [f"PAYSTREAM_{name}_URL=http://127.0.0.1:{port}" for name, port in HTTP_PORTS.items()]
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
        bootstrap, database_url = infra.kafka_bootstrap, infra.database_url
        if stop.is_set():
            return 0

        kafka_settings = KafkaSettings(kafka_bootstrap=bootstrap)
        db_settings = DatabaseSettings(database_url=database_url)
        migrate.upgrade(db_settings.sqlalchemy_url)
        ensure_topics(kafka_settings)
        demo = asyncio.run(_seed_demo(db_settings))
        dev = DevStack(bootstrap, database_url, kafka_settings.topic_prefix, demo)

        keyring = ensure_dev_keyring(home)
        service_env = {
            **os.environ,
            **keyring.environment_with_key_material(),
            "PAYSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "PAYSTREAM_DATABASE_URL": database_url,
            "PAYSTREAM_TOPIC_PREFIX": kafka_settings.topic_prefix,
            "PAYSTREAM_INGEST_PORT": str(HTTP_PORTS["API"]),
        }
        children: dict[str, ChildProcess] = {}
        for name, args in SERVICES.items():
            child = ChildProcess(
                [sys.executable, "-m", "paystream_cli.main", *args],
                log_path=logs / f"{name}.log",
                name=name,
                env=service_env,
            )
            child.start()
            stack.callback(child.stop, 15.0)
            children[name] = child

        for name, url in READY_URLS.items():
            _wait_ready(name, url, children[name], stop)
        if stop.is_set():
            return 0
        write_dev_env(env_file, dev, list(children))
        stack.callback(env_file.unlink, missing_ok=True)
        _print_summary(dev, children, env_file, logs)

        while not stop.wait(0.5):
            for name, child in children.items():
                if child.poll() is not None:
                    log.error("dev: %s exited with %s", name, child.returncode)
                    print(child.describe_failure("exited unexpectedly", name), file=sys.stderr)
                    return 1
    log.info("dev: stopped")
    return 0


def _wait_ready(name: str, url: str, child: ChildProcess, stop: threading.Event) -> None:
    """Until `url` answers 200; a child that dies first is a startup failure."""
    deadline = time.monotonic() + 60
    while not stop.is_set():
        if child.poll() is not None:
            raise DevStartError(child.describe_failure("exited during startup", name))
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our URL
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DevStartError(child.describe_failure(f"not ready at {url} after 60 s", name))
        stop.wait(0.1)


class DevStartError(RuntimeError):
    pass


def _print_summary(
    dev: DevStack, children: dict[str, ChildProcess], env_file: Path, logs: Path
) -> None:
    rows = [
        ("kafka", dev.kafka_bootstrap),
        ("postgresql", dev.database_url),
        ("topics", f"{dev.topic_prefix}.{{commands,callbacks,outcomes,dead-letters}}"),
        ("demo tenant", str(dev.demo.tenant_id)),
    ]
    rows += [(name, f"pid {child.pid}, log {child.log_path}") for name, child in children.items()]
    width = max(len(name) for name, _ in rows)
    print("paystream dev is running:", flush=True)
    for name, where in rows:
        print(f"  {name:<{width}}  {where}")
    print(f"  environment: {env_file} (source it to talk to this stack)")
    print(f"  logs:        {logs}")
    print("Ctrl-C or SIGTERM stops everything.", flush=True)
