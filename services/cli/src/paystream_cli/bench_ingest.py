"""`paystream bench ingest`: POST /v1/deposits throughput and latency at a concurrency.

Runs the real `paystream serve ingest-api` process against the embedded (or configured)
broker and PostgreSQL; the load generator is an asyncio httpx client in this process, so on
a small machine it competes with the server for CPU: the figures are a floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from paystream_cli.infra import open_infra
from paystream_config import DatabaseSettings, KafkaSettings
from paystream_devinfra import free_port
from paystream_keyring import ensure_dev_keyring
from paystream_messaging.topics import ensure_topics
from paystream_storage import migrate
from paystream_storage.tenants import hash_api_key


async def _load(url: str, api_key: str, total: int, concurrency: int) -> tuple[list[float], int]:
    """`concurrency` keep-alive connections, each sending its share of POSTs back to back.

    A raw HTTP/1.1 client: httpx spent more CPU than the server on this machine and made
    the generator the bottleneck.
    """
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures = 0
    counter = iter(range(total))

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                body = json.dumps(
                    {
                        "account_id": f"bench-{i % 5000}",
                        "country": "DE",
                        "amount": "10.00",
                        "currency": "EUR",
                    }
                ).encode()
                request = (
                    f"POST /v1/deposits HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {api_key}\r\nIdempotency-Key: b-{i}-{uuid.uuid4()}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - started) * 1000)
                if not head.startswith(b"HTTP/1.1 202"):
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, failures


def run(home: Path, total: int, concurrency: int, server: str, workers: int) -> None:
    with contextlib.ExitStack() as stack:
        infra = open_infra(stack, home / "bench")
        db = DatabaseSettings(database_url=infra.database_url)
        scratch = f"paystream_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(db.libpq_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{scratch}"')
        stack.callback(_drop, db.libpq_url, scratch)
        scratch_url = db.sqlalchemy_url.rsplit("/", 1)[0] + f"/{scratch}"
        migrate.upgrade(scratch_url)
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        ensure_topics(KafkaSettings(kafka_bootstrap=infra.kafka_bootstrap, topic_prefix=prefix))
        api_key = f"psk_bench_{uuid.uuid4().hex}"
        with psycopg.connect(DatabaseSettings(database_url=scratch_url).libpq_url) as conn:
            tenant = uuid.uuid4()
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'bench')", (tenant,))
            conn.execute(
                "INSERT INTO api_keys (id, tenant_id, prefix, key_hash)"
                " VALUES (%s, %s, 'psk_', %s)",
                (uuid.uuid4(), tenant, hash_api_key(api_key)),
            )
        keyring = ensure_dev_keyring(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        port = free_port()
        env = {
            **os.environ,
            **keyring.environment_with_key_material(),
            "PAYSTREAM_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "PAYSTREAM_DATABASE_URL": scratch_url,
            "PAYSTREAM_TOPIC_PREFIX": prefix,
            "PAYSTREAM_INGEST_PORT": str(port),
            "PAYSTREAM_INGEST_SERVER": server,
            "PAYSTREAM_INGEST_WORKERS": str(workers),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "paystream_cli.main", "serve", "ingest-api"], env=env
        )
        stack.callback(_stop, proc)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        asyncio.run(_load(url, api_key, min(500, total), concurrency))  # warm-up
        started = time.perf_counter()
        latencies, failures = asyncio.run(_load(url, api_key, total, concurrency))
        elapsed = time.perf_counter() - started
        q = statistics.quantiles(latencies, n=100)
        print(
            f"ingest bench: {server} x{workers} worker(s), concurrency {concurrency},"
            f" {total} POST /v1/deposits"
        )
        print(
            f"  throughput: {total / elapsed:,.0f} requests/s ({elapsed:.1f} s),"
            f" non-202: {failures}"
        )
        print(f"  latency: p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms")


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ingest-api exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("ingest-api not ready after 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _drop(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
