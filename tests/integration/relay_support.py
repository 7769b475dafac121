"""Shared by the outbox relay tests: a scratch topic prefix and tenant, outbox rows written
straight into the table, relay processes, and reading the topic back."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

from paystream_config import KafkaSettings
from paystream_messaging.topics import ensure_topics
from paystream_storage.outbox import shard_for
from tests.support.databases import libpq
from tests.support.kafka import Received, consume_until
from tests.support.processes import paystream

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
        return paystream(["worker", "relay"], self.env(**extra), self.log(name))

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def unpublished(self) -> int:
        with psycopg.connect(libpq(self.database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
        assert row is not None
        return int(row[0])


def make_relay_env(bootstrap: str, database_url: str, logs: Path) -> RelayEnv:
    """Fresh topics under a new prefix and a tenant for the outbox rows."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    ensure_topics(
        KafkaSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, topic_partitions=PARTITIONS)
    )
    tenant = uuid.uuid4()
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'relay-test')", (tenant,))
    return RelayEnv(bootstrap, database_url, prefix, tenant, logs)


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


def write_rows(env: RelayEnv, count: int, keys: int, *, first_version: int = 1) -> dict[str, str]:
    """`count` outbox rows round-robin over `keys` keys; version = per-key sequence from
    `first_version` (pass the next one when writing more rows for the same keys).

    Returns event id -> key.
    """
    ids: dict[str, str] = {}
    per_key: dict[str, int] = defaultdict(lambda: first_version - 1)
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


def read_all(env: RelayEnv, expected_ids: set[str]) -> list[Received]:
    """The topic from the start, until every id in `expected_ids` has been seen."""

    def seen_all(records: list[Received]) -> bool:
        return expected_ids <= {r.headers["ce_id"].decode() for r in records}

    return consume_until(env.bootstrap, env.topic, seen_all, timeout=120)


def assert_per_key_order(records: list[Received]) -> None:
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


def ce_ids(records: list[Received]) -> list[str]:
    return [r.headers["ce_id"].decode() for r in records]


class TopicCount:
    """Records on a topic so far (sum of high watermarks) over one open connection, cheap
    enough to poll while a relay publishes: Kafka runs ahead of the outbox marks, so a kill
    timed on it lands while acknowledged records may still be unmarked."""

    def __init__(self, env: RelayEnv) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": env.bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"}
        )
        self._partitions = [TopicPartition(env.topic, p) for p in range(PARTITIONS)]

    def __call__(self) -> int:
        return sum(
            self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions
        )

    def close(self) -> None:
        self._consumer.close()
