"""`make dev` as a newcomer runs it: starts the stack, writes dev.env, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from paystream_storage.tenants import hash_api_key
from tests.support.asgi_server import free_port
from tests.support.databases import libpq
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = {
    "PAYSTREAM_API_URL",
    "PAYSTREAM_CALLBACK_URL",
    "PAYSTREAM_SANDBOX_URL",
    "PAYSTREAM_KAFKA_BOOTSTRAP",
    "PAYSTREAM_DATABASE_URL",
    "PAYSTREAM_DEMO_API_KEY",
    "PAYSTREAM_DEMO_TENANT_ID",
    "PAYSTREAM_TOPIC_PREFIX",
}


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # exited while we looked
        return ""


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def test_make_dev_starts_writes_env_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PAYSTREAM_KAFKA_BOOTSTRAP", "PAYSTREAM_DATABASE_URL")
    }
    env["PAYSTREAM_HOME"] = str(tmp_path / "home")
    for name in ("API", "CALLBACK", "SANDBOX"):
        env[f"PAYSTREAM_DEV_{name}_PORT"] = str(free_port())
    dev_env = tmp_path / "home" / "dev.env"
    log = (tmp_path / "make-dev.log").open("wb")
    proc = subprocess.Popen(
        ["make", "dev"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: dev_env.exists() or proc.poll() is not None, timeout=180, what="dev.env")
        assert proc.poll() is None, (tmp_path / "make-dev.log").read_text()
        values = _read_env(dev_env)
        assert set(values) >= REQUIRED_KEYS, REQUIRED_KEYS - set(values)

        # The stack it describes is real: topics exist, the demo key resolves to the tenant.
        topics = (
            AdminClient({"bootstrap.servers": values["PAYSTREAM_KAFKA_BOOTSTRAP"]})
            .list_topics(timeout=10)
            .topics
        )
        prefix = values["PAYSTREAM_TOPIC_PREFIX"]
        assert {
            f"{prefix}.{t}" for t in ("commands", "callbacks", "outcomes", "dead-letters")
        } <= set(topics)
        with psycopg.connect(libpq(values["PAYSTREAM_DATABASE_URL"])) as conn:
            row = conn.execute(
                "SELECT paystream_tenant_for_key_hash(%s)",
                (hash_api_key(values["PAYSTREAM_DEMO_API_KEY"]),),
            ).fetchone()
            assert row is not None
            assert row[0] == uuid.UUID(values["PAYSTREAM_DEMO_TENANT_ID"])
            routes = conn.execute(
                "SELECT country, transaction_type, count(*) FROM gateway_countries"
                " GROUP BY 1, 2 HAVING count(*) >= 2"
            ).fetchall()
            assert len({r[0] for r in routes}) >= 5
            assert {r[1] for r in routes} == {"deposit", "withdrawal"}

        family = psutil.Process(proc.pid).children(recursive=True)
        # Children come and go (PostgreSQL backends, make's own shells): one that exited
        # between the listing and the read is simply not there any more.
        names = " ".join(_cmdline(p) for p in family)
        assert "serve ingest-api" in names
        health = httpx.get(f"{values['PAYSTREAM_API_URL']}/readyz", timeout=10)
        assert health.json() == {"status": "ready", "kafka": True, "database": True}
        assert "tansu" in names
        assert "postgres" in names
        assert "worker relay" in names

        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)  # a clean stop, not a fast one, is what is tested
        budget = max(0.1, 30 - (time.monotonic() - started))
        _gone, alive = psutil.wait_procs(family, timeout=budget)
        assert not alive, f"left running after SIGTERM: {[_cmdline(p) for p in alive]}"
        assert time.monotonic() - started < 30
        assert not dev_env.exists(), "dev.env outlived the stack it describes"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
