"""`paystream bench worker`: commands/s through the gateway worker and the time from a
command reaching Kafka to its terminal outcome event, at a given provider latency.

Starts a private `paystream dev` stack (embedded servers, sandbox), sets the sandbox's
latency, produces signed-off CloudEvent commands straight to Kafka (the ingest API is not
in the measurement) and reads the outcomes topic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Producer

from paystream_cli.bench_stack import private_env, start_dev
from paystream_cli.demo_seed import DEPOSIT_ROUTES
from paystream_core.ids import payload_hash, transaction_id
from paystream_keyring import DEV_KEYRING_FILE, read_keyring_file
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.commands import RequestDeposit
from paystream_messaging.outcomes import OUTCOME_TYPES
from paystream_messaging.schemas import SchemaRegistry

CURRENCY = {"DE": "EUR", "FR": "EUR", "GB": "GBP", "US": "USD", "BR": "BRL", "NG": "NGN"}
# Where a command stops for this bench: terminal, or waiting for the reconciler.
TERMINAL = {o.STATUS.value for o in OUTCOME_TYPES.values() if o.STATUS.terminal} | {"unknown"}


def run(commands: int, latency_ms: int, concurrency: int, workers: int, rate: float | None) -> None:
    home = Path(tempfile.mkdtemp(prefix="paystream-bench-"))
    env = private_env(home, PAYSTREAM_WORKER_CONCURRENCY=str(concurrency))
    dev = start_dev(env, subprocess.DEVNULL)
    try:
        dev_env = _wait_env(home / "dev.env", dev)
        httpx.put(
            f"{dev_env['PAYSTREAM_SANDBOX_URL']}/_sandbox/faults/json",
            json={"latency_ms": latency_ms},
        ).raise_for_status()
        for provider in ("stripe", "soap"):
            httpx.put(
                f"{dev_env['PAYSTREAM_SANDBOX_URL']}/_sandbox/faults/{provider}",
                json={"latency_ms": latency_ms},
            ).raise_for_status()
        extra = _more_workers(workers - 1, env, dev_env, home)
        _measure(dev_env, commands, latency_ms, concurrency, workers, rate)
        for proc in extra:
            proc.terminate()
            proc.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(60)


def _more_workers(
    count: int, env: dict[str, str], dev_env: dict[str, str], home: Path
) -> list[subprocess.Popen[bytes]]:
    """Scale-out: more gateway workers in the same consumer group split the partitions."""
    ring = read_keyring_file(home / DEV_KEYRING_FILE)
    worker_env = {**env, **dev_env, **ring.environment_with_key_material()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "paystream_cli.main", "worker", "gateway"],
            env=worker_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    if procs:
        time.sleep(8)  # let the group rebalance before the clock starts (not a correctness wait)
    return procs


def _wait_env(path: Path, dev: subprocess.Popen[bytes]) -> dict[str, str]:
    deadline = time.monotonic() + 180
    while not path.exists():
        if dev.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("paystream dev did not start")
        time.sleep(0.2)
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def _measure(
    dev_env: dict[str, str],
    commands: int,
    latency_ms: int,
    concurrency: int,
    workers: int,
    rate: float | None,
) -> None:
    bootstrap = dev_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    prefix = dev_env["PAYSTREAM_TOPIC_PREFIX"]
    tenant = uuid.UUID(dev_env["PAYSTREAM_DEMO_TENANT_ID"])
    registry = SchemaRegistry()
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    ready = threading.Event()

    def collect() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4()}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.queue.backoff.ms": 0,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )
        consumer.subscribe([f"{prefix}.outcomes"], on_assign=lambda c, parts: ready.set())
        deadline = time.monotonic() + 600
        while len(done) < commands and time.monotonic() < deadline:
            # poll() returns as soon as a record is there; consume(n, timeout) waited for n
            # records or the whole timeout and stamped arrivals up to 200 ms late.
            first = consumer.poll(0.05)
            for msg in [first, *consumer.consume(500, 0)] if first is not None else []:
                if msg.error() or msg.value() is None:
                    continue
                data = json.loads(msg.value() or b"{}")
                if data.get("status") in TERMINAL and data["transaction_id"] not in done:
                    done[data["transaction_id"]] = time.monotonic()
        consumer.close()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    ready.wait(60)
    time.sleep(1)  # the assignment is known; let the first fetch position settle
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    countries = list(DEPOSIT_ROUTES)
    started = time.monotonic()
    for i in range(commands):
        if rate:  # open-loop pacing: latency without a self-made queue
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        country = countries[i % len(countries)]
        key = f"bench-{uuid.uuid4()}"
        txn = transaction_id(tenant, key)
        account = f"bench-{i % 200}"
        body = {"account_id": account, "country": country, "amount": "10.00", "key": key}
        command = RequestDeposit(
            transaction_id=txn,
            tenant_id=tenant,
            idempotency_key=key,
            payload_hash=payload_hash(body),
            account_id=account,
            country=country,
            amount_minor=1000,
            currency=CURRENCY[country],
            requested_at=datetime.now(UTC),
            payment_method="pm_card_visa",
        )
        record = encode(command.to_event(source="/paystream/bench"), registry)
        sent[str(txn)] = time.monotonic()
        producer.produce(
            f"{prefix}.commands",
            value=record.value,
            key=record.key,
            headers=list[tuple[str, str | bytes | None]](record.headers),
        )
        producer.poll(0)
    producer.flush(30)
    reader.join(600)
    finished = [t for t in done if t in sent]
    elapsed = max(done[t] for t in finished) - started
    latencies = sorted((done[t] - sent[t]) * 1000 for t in finished)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"worker bench: {commands} deposit commands, provider latency {latency_ms} ms,"
        f" {workers} worker process(es) x concurrency {concurrency},"
        f" sent {'at once' if not rate else f'at {rate:g}/s'}"
    )
    print(f"  completed: {len(finished)}; sustained {len(finished) / elapsed:,.0f} commands/s")
    print(
        f"  command -> terminal outcome: p50 {q[49]:.0f} ms, p90 {q[89]:.0f} ms, p99 {q[98]:.0f} ms"
    )
