"""`paystream bench relay`: outbox relay throughput and write-to-ack latency.

Writes N outbox rows into a scratch database in chunks (one transaction each) while one
relay runs in-process; reports rows/s and, per row, the time from its writing transaction
to Kafka's acknowledgement (p50/p90/p99).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from paystream_cli.infra import open_infra
from paystream_config import DatabaseSettings, KafkaSettings
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_messaging.topics import ensure_topics
from paystream_relay.relay import OutboxRelay
from paystream_storage import migrate
from paystream_storage.outbox import shard_for


def _data(tenant: uuid.UUID, key: str, version: int) -> str:
    return json.dumps(
        {
            "transaction_id": str(uuid.uuid4()),
            "tenant_id": str(tenant),
            "account_id": key,
            "type": "deposit",
            "status": "processing",
            "version": version,
            "amount_minor": 1000,
            "currency": "EUR",
            "gateway": None,
            "provider_reference": None,
            "failure": None,
            "occurred_at": "2026-01-01T00:00:00Z",
        }
    )


def _write(
    conninfo: str, tenant: uuid.UUID, rows: int, chunk: int, rate: float | None = None
) -> None:
    """Insert `rows` rows, `chunk` per transaction, at most `rate` rows/s when given."""
    started = time.monotonic()
    with psycopg.connect(conninfo) as conn:
        for start in range(0, rows, chunk):
            if rate:
                ahead = start / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the load generator, not synchronisation
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY outbox (tenant_id, topic, key, shard, event_id, event_type, source,"
                    " occurred_at, data) FROM STDIN"
                ) as copy,
            ):
                for i in range(start, min(start + chunk, rows)):
                    key = f"acct-{i % 1000}"
                    copy.write_row(
                        (
                            tenant,
                            "outcomes",
                            key,
                            shard_for(key),
                            uuid.uuid4(),
                            "paystream.transaction.processing.v1",
                            "/paystream/bench",
                            datetime.now(UTC),
                            _data(tenant, key, i // 1000 + 1),
                        )
                    )


def run(home: Path, rows: int, chunk: int, batch_size: int, rate: float, seconds: float) -> None:
    with contextlib.ExitStack() as stack:
        infra = open_infra(stack, home / "bench", fsync=True)
        db = DatabaseSettings(database_url=infra.database_url)
        scratch = f"paystream_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(db.libpq_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{scratch}"')
        stack.callback(_drop, db.libpq_url, scratch)
        base = db.sqlalchemy_url.rsplit("/", 1)[0]
        scratch_db = DatabaseSettings(database_url=f"{base}/{scratch}")
        migrate.upgrade(scratch_db.sqlalchemy_url)
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        kafka = KafkaSettings(kafka_bootstrap=infra.kafka_bootstrap, topic_prefix=prefix)
        ensure_topics(kafka)
        tenant = uuid.uuid4()
        with psycopg.connect(scratch_db.libpq_url) as conn:
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'bench')", (tenant,))

        registry = SchemaRegistry()
        relay = OutboxRelay(
            conninfo=scratch_db.libpq_url,
            new_producer=lambda: Producer(producer_config(kafka, "paystream-bench")),
            topic_for=kafka.topic,
            encode=lambda e: encode(e, registry, validate=False),
            batch_size=batch_size,
        )
        stop = threading.Event()
        relay_thread = threading.Thread(target=relay.run, args=(stop, 1.0), daemon=True)
        with psycopg.connect(scratch_db.libpq_url, autocommit=True) as conn:
            # Warm-up: the producer's first batch waits for its connection and producer id.
            _write(scratch_db.libpq_url, tenant, 1, 1)
            relay_thread.start()
            _wait_published(conn)
            conn.execute("DELETE FROM outbox")

            # 1. Drain: a backlog of `rows` committed rows, relay at full speed.
            _write(scratch_db.libpq_url, tenant, rows, 1000)
            started = time.monotonic()
            _wait_published(conn)
            drain_s = time.monotonic() - started
            conn.execute("DELETE FROM outbox")

            # 2. Steady load: `rate` rows/s in transactions of `chunk` rows; per-row latency
            # from its writing transaction (created_at) to Kafka's ack (published_at).
            _write(scratch_db.libpq_url, tenant, int(rate * seconds), chunk, rate)
            _wait_published(conn)
            latencies = [
                float(r[0])
                for r in conn.execute(
                    "SELECT extract(epoch FROM published_at - created_at) * 1000 FROM outbox"
                )
            ]
        stop.set()
        relay_thread.join(10)
        q = statistics.quantiles(latencies, n=100)
        print(f"relay bench (batch {relay.batch_size}, {scratch_db.sqlalchemy_url.split('@')[-1]})")
        print(f"  drain: {rows} rows in {drain_s:.2f} s = {rows / drain_s:,.0f} rows/s")
        print(
            f"  steady {rate:,.0f} rows/s x {seconds:.0f} s, {chunk} rows per commit:"
            f" commit -> Kafka ack p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms"
        )
        print(f"  relay batches: {relay.stats.batches}, failed: {relay.stats.failed_batches}")


def _wait_published(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    while _unpublished(conn):
        time.sleep(0.01)


def _unpublished(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)").fetchone()
    return bool(row and row[0])


def _drop(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
