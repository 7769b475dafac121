"""The outbox relay on the real broker and PostgreSQL: crash safety, order, wake-up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from paystream_config import KafkaSettings
from paystream_messaging.topics import ensure_topics
from paystream_storage.outbox import shard_for
from tests.support.databases import libpq
from tests.support.kafka import Received, consume_until
from tests.support.polling import wait_for
from tests.support.processes import paystream, terminate

pytestmark = pytest.mark.integration

PARTITIONS = 6


@dataclass
class RelayEnv:
    bootstrap: str
    database_url: str
    prefix: str
    tenant_id: uuid.UUID
    logs: Path

    @property
    def topic(self) -> str:
        return f"{self.prefix}.outcomes"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PAYSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "PAYSTREAM_DATABASE_URL": self.database_url,
            "PAYSTREAM_TOPIC_PREFIX": self.prefix,
            "PAYSTREAM_TOPIC_PARTITIONS": str(PARTITIONS),
            **extra,
        }

    def start(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        return paystream(["worker", "relay"], self.env(**extra), self.logs / f"{name}.log")

    def unpublished(self) -> int:
        with psycopg.connect(libpq(self.database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def relay_env(kafka_bootstrap: str, primary_database_url: str, tmp_path: Path) -> RelayEnv:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    ensure_topics(
        KafkaSettings(
            kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, topic_partitions=PARTITIONS
        )
    )
    tenant = uuid.uuid4()
    with psycopg.connect(libpq(primary_database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'relay-test')", (tenant,))
    return RelayEnv(kafka_bootstrap, primary_database_url, prefix, tenant, tmp_path)


def _outcome(tenant: uuid.UUID, key: str, version: int) -> dict[str, object]:
    return {
        "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "tenant_id": str(tenant),
        "account_id": key,
        "type": "deposit",
        "status": "processing",
        "version": version,
        "amount_minor": 1000 + version,
        "currency": "EUR",
        "gateway": None,
        "provider_reference": None,
        "failure": None,
        "occurred_at": "2026-01-01T00:00:00Z",
    }


def _write_rows(env: RelayEnv, count: int, keys: int) -> dict[str, str]:
    """`count` outbox rows round-robin over `keys` keys; version = per-key sequence.

    Returns event id -> key.
    """
    ids: dict[str, str] = {}
    per_key: dict[str, int] = defaultdict(int)
    now = datetime.now(UTC)
    with (
        psycopg.connect(libpq(env.database_url)) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY outbox (tenant_id, topic, key, shard, event_id, event_type, source,"
            " occurred_at, data) FROM STDIN"
        ) as copy,
    ):
        for i in range(count):
            key = f"acct-{i % keys}"
            per_key[key] += 1
            event_id = str(uuid.uuid4())
            ids[event_id] = key
            copy.write_row(
                (
                    env.tenant_id,
                    "outcomes",
                    key,
                    shard_for(key),
                    event_id,
                    "paystream.transaction.processing.v1",
                    "/paystream/test",
                    now,
                    json.dumps(_outcome(env.tenant_id, key, per_key[key])),
                )
            )
    return ids


def _read_all(env: RelayEnv, expected_ids: set[str]) -> list[Received]:
    def seen_all(records: list[Received]) -> bool:
        return expected_ids <= {r.headers["ce_id"].decode() for r in records}

    return consume_until(env.bootstrap, env.topic, seen_all, timeout=120)


def _assert_per_key_order(records: list[Received]) -> None:
    """A consumer that drops versions it has already seen gets each key's rows in order."""
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        data = json.loads(r.value or b"{}")
        by_key[data["account_id"]].append(data["version"])
        partitions[data["account_id"]].add(r.partition)
    for key, versions in by_key.items():
        assert len(partitions[key]) == 1, f"{key} spread over partitions {partitions[key]}"
        newest, accepted = 0, []
        for v in versions:
            if v > newest:
                accepted.append(v)
                newest = v
        assert accepted == list(range(1, max(versions) + 1)), f"{key}: {versions[:50]}"


def test_kill_9_while_publishing_loses_nothing(relay_env: RelayEnv) -> None:
    ids = _write_rows(relay_env, count=10_000, keys=50)
    kills = 0
    for round_no in range(3):
        proc = relay_env.start(f"relay-{round_no}", PAYSTREAM_RELAY_BATCH_SIZE="100")
        target = 10_000 - 2_000 * (round_no + 1)
        wait_for(
            lambda p=proc, t=target: relay_env.unpublished() <= t or p.poll() is not None,  # type: ignore[misc]
            timeout=60,
            what=f"relay to publish down to {target} unpublished rows",
        )
        assert proc.poll() is None, "relay exited on its own"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kills += 1
    final = relay_env.start("relay-final")
    try:
        wait_for(lambda: relay_env.unpublished() == 0, timeout=120, what="every row published")
    finally:
        assert terminate(final) == 0
    records = _read_all(relay_env, set(ids))
    seen = [r.headers["ce_id"].decode() for r in records]
    assert set(seen) == set(ids), "rows missing from the topic"
    _assert_per_key_order(records)
    duplicates = len(seen) - len(set(seen))
    print(f"\nrelay kill -9 x{kills}: 10000 rows, {len(seen)} records, {duplicates} duplicates")


def test_two_relays_share_the_work_without_duplicates(relay_env: RelayEnv) -> None:
    ids = _write_rows(relay_env, count=4_000, keys=40)
    procs = [
        relay_env.start(
            f"relay-{n}", PAYSTREAM_RELAY_BATCH_SIZE="50", PAYSTREAM_RELAY_MAX_SHARDS_PER_BATCH="4"
        )
        for n in range(2)
    ]
    try:
        wait_for(lambda: relay_env.unpublished() == 0, timeout=120, what="every row published")
    finally:
        codes = [terminate(p) for p in procs]
    assert codes == [0, 0]
    records = _read_all(relay_env, set(ids))
    seen = [r.headers["ce_id"].decode() for r in records]
    assert len(seen) == len(set(seen)) == len(ids), "a row was published twice"
    _assert_per_key_order(records)
    counts = [_published_count(relay_env.logs / f"relay-{n}.log") for n in range(2)]
    assert sum(counts) == len(ids)
    assert min(counts) > 0, f"one relay did all the work: {counts}"


def _published_count(log: Path) -> int:
    match = re.search(r"publishing (\d+) rows", log.read_text())
    assert match, f"no final count in {log}"
    return int(match[1])


def test_relay_wakes_on_notify_not_on_its_poll(relay_env: RelayEnv) -> None:
    # With a 60 s fallback poll, only LISTEN/NOTIFY can deliver a row within the deadline.
    proc = relay_env.start("relay", PAYSTREAM_RELAY_IDLE_POLL_S="60")
    try:
        first = _write_rows(relay_env, count=1, keys=1)
        wait_for(lambda: relay_env.unpublished() == 0, timeout=20, what="first row")
        second = _write_rows(relay_env, count=1, keys=1)
        wait_for(lambda: relay_env.unpublished() == 0, timeout=10, what="row after idle")
    finally:
        assert terminate(proc) == 0
    records = _read_all(relay_env, set(first) | set(second))
    record = next(r for r in records if r.headers["ce_id"].decode() in second)
    assert record.headers["ce_type"] == b"paystream.transaction.processing.v1"
    assert record.key == b"acct-0"
