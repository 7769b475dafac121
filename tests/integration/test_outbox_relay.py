"""The outbox relay on the real broker and PostgreSQL: crash safety, order, wake-up, and how
many rows a failure mid-batch can republish (one chunk)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.rows import dict_row

from paystream_config import KafkaSettings
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_relay.relay import OutboxRelay, PublishError
from paystream_storage.models import OUTBOX_SHARDS
from tests.integration.relay_support import (
    PARTITIONS,
    RelayEnv,
    TopicCount,
    assert_per_key_order,
    ce_ids,
    make_relay_env,
    read_all,
    write_rows,
)
from tests.support.databases import libpq
from tests.support.polling import wait_for
from tests.support.processes import terminate

pytestmark = pytest.mark.integration

CHUNK = 50


@pytest.fixture
def relay_env(kafka_bootstrap: str, primary_database_url: str, tmp_path: Path) -> RelayEnv:
    return make_relay_env(kafka_bootstrap, primary_database_url, tmp_path)


def test_kill_9_while_publishing_loses_nothing(relay_env: RelayEnv) -> None:
    ids = write_rows(relay_env, count=10_000, keys=50)
    kills = 0
    with contextlib.closing(TopicCount(relay_env)) as on_topic:
        for round_no in range(3):
            # Batches of 500 rows, 10 chunks each: a kill lands inside a batch.
            proc = relay_env.start(
                f"relay-{round_no}",
                PAYSTREAM_RELAY_BATCH_SIZE="500",
                PAYSTREAM_RELAY_PUBLISH_CHUNK=str(CHUNK),
            )
            # Early targets leave thousands of rows after the last kill: a busy machine
            # that is slow to notice a target still kills inside the backlog.
            target = 1_000 * (round_no + 1)
            wait_for(
                lambda p=proc, t=target: on_topic() >= t or p.poll() is not None,  # type: ignore[misc]
                timeout=60,
                interval=0.005,
                what=f"{target} records on the topic",
            )
            assert proc.poll() is None, "relay exited on its own"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            assert relay_env.unpublished() > 0, "the kill came after the backlog was drained"
    final = relay_env.start("relay-final")
    try:
        wait_for(lambda: relay_env.unpublished() == 0, timeout=120, what="every row published")
    finally:
        assert terminate(final) == 0
    records = read_all(relay_env, set(ids))
    seen = ce_ids(records)
    assert set(seen) == set(ids), "rows missing from the topic"
    assert_per_key_order(records)
    duplicates = len(seen) - len(set(seen))
    print(f"\nrelay kill -9 x{kills}: 10000 rows, {len(seen)} records, {duplicates} duplicates")
    # Each kill republishes at most the one chunk Kafka had (maybe) acknowledged but the
    # relay had not yet marked; whole batches (500 rows) are no longer at stake.
    assert duplicates <= kills * CHUNK


def test_two_relays_share_the_work_without_duplicates(relay_env: RelayEnv) -> None:
    ids = write_rows(relay_env, count=4_000, keys=40)
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
    records = read_all(relay_env, set(ids))
    seen = ce_ids(records)
    assert len(seen) == len(set(seen)) == len(ids), "a row was published twice"
    assert_per_key_order(records)
    counts = [_published_count(relay_env.log(f"relay-{n}")) for n in range(2)]
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
        first = write_rows(relay_env, count=1, keys=1)
        wait_for(lambda: relay_env.unpublished() == 0, timeout=20, what="first row")
        second = write_rows(relay_env, count=1, keys=1, first_version=2)
        wait_for(lambda: relay_env.unpublished() == 0, timeout=10, what="row after idle")
    finally:
        assert terminate(proc) == 0
    records = read_all(relay_env, set(first) | set(second))
    record = next(r for r in records if r.headers["ce_id"].decode() in second)
    assert record.headers["ce_type"] == b"paystream.transaction.processing.v1"
    assert record.key == b"acct-0"


# --- one batch, in process: what a failure in its third chunk leaves behind -------------


class _HookedProducer(Producer):
    """The real producer, with a hook after each flush: the test injects a failure at an
    exact point of a batch, after the chunk really reached the broker (the worst case for
    duplicates)."""

    def __init__(self, config: dict[str, Any], after_flush: Callable[[int, int], int]) -> None:
        super().__init__(config)
        self.after_flush = after_flush
        self.flushes = 0

    def flush(self, timeout: float = -1) -> int:
        remaining = super().flush(timeout)
        self.flushes += 1
        return self.after_flush(self.flushes, remaining)


def _relay(env: RelayEnv, after_flush: Callable[[int, int], int] | None = None) -> OutboxRelay:
    kafka = KafkaSettings(
        kafka_bootstrap=env.bootstrap, topic_prefix=env.prefix, topic_partitions=PARTITIONS
    )
    config = producer_config(kafka, client_id="relay-test")
    registry = SchemaRegistry()

    def new_producer() -> Producer:
        if after_flush is None:
            return Producer(config)
        return _HookedProducer(config, after_flush)

    return OutboxRelay(
        conninfo=libpq(env.database_url),
        new_producer=new_producer,
        topic_for=kafka.topic,
        encode=lambda event: encode(event, registry, validate=False),
        batch_size=500,
        max_shards=OUTBOX_SHARDS,  # one batch takes the whole backlog, in id order
        publish_chunk=CHUNK,
    )


def _event_ids_by_id(env: RelayEnv, published: bool) -> list[str]:
    with psycopg.connect(libpq(env.database_url)) as conn:
        rows = conn.execute(
            "SELECT event_id::text FROM outbox WHERE (published_at IS NOT NULL) = %s ORDER BY id",
            (published,),
        ).fetchall()
    return [r[0] for r in rows]


def _all_event_ids(env: RelayEnv) -> list[str]:
    with psycopg.connect(libpq(env.database_url)) as conn:
        return [r[0] for r in conn.execute("SELECT event_id::text FROM outbox ORDER BY id")]


def _shards_free(env: RelayEnv) -> bool:
    """No relay still holds a shard lock (NOWAIT fails at once on a held one)."""
    with psycopg.connect(libpq(env.database_url)) as conn:
        try:
            conn.execute("SELECT shard FROM outbox_shards FOR UPDATE NOWAIT").fetchall()
        except psycopg.errors.LockNotAvailable:
            return False
    return True


def _assert_republished_only(env: RelayEnv, ids: set[str], allowed: set[str]) -> None:
    records = read_all(env, ids)
    seen = ce_ids(records)
    assert set(seen) == ids, "rows missing from the topic"
    twice = {ce_id for ce_id, n in Counter(seen).items() if n > 1}
    assert twice <= allowed, f"{len(twice - allowed)} rows outside the failed chunk republished"
    assert max(Counter(seen).values()) <= 2
    assert_per_key_order(records)


def test_a_chunk_kafka_fails_leaves_the_chunks_before_it_published(relay_env: RelayEnv) -> None:
    ids = write_rows(relay_env, count=200, keys=20)
    order = _all_event_ids(relay_env)
    failing = _relay(relay_env, lambda n, remaining: 1 if n == 3 else remaining)
    with (
        psycopg.connect(libpq(relay_env.database_url), row_factory=dict_row) as conn,
        psycopg.connect(libpq(relay_env.database_url), autocommit=True) as marker,
    ):
        with pytest.raises(PublishError, match="1 records unacknowledged"):
            failing.publish_batch(conn, marker)
        assert _event_ids_by_id(relay_env, published=True) == order[: 2 * CHUNK]
        assert failing.stats.published == 2 * CHUNK
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert _shards_free(relay_env)

        # The retry (as the run loop does it: a fresh producer) publishes the rest.
        assert _relay(relay_env).publish_batch(conn, marker) == 200 - 2 * CHUNK
    assert _event_ids_by_id(relay_env, published=False) == []
    _assert_republished_only(relay_env, set(ids), allowed=set(order[2 * CHUNK : 3 * CHUNK]))


def test_losing_the_mark_connection_mid_batch_rolls_the_claim_back(relay_env: RelayEnv) -> None:
    ids = write_rows(relay_env, count=200, keys=20)
    order = _all_event_ids(relay_env)
    url = libpq(relay_env.database_url)
    with (
        psycopg.connect(url, row_factory=dict_row) as conn,
        psycopg.connect(url, autocommit=True) as marker,
        psycopg.connect(url, autocommit=True) as admin,
    ):

        def drop_marker(flushes: int, remaining: int) -> int:
            if flushes == 3:  # chunk 3 is on Kafka; its mark will find the connection gone
                admin.execute("SELECT pg_terminate_backend(%s)", (marker.info.backend_pid,))
            return remaining

        with pytest.raises(psycopg.OperationalError):
            _relay(relay_env, drop_marker).publish_batch(conn, marker)
        assert _event_ids_by_id(relay_env, published=True) == order[: 2 * CHUNK]
        assert _shards_free(relay_env), "the claim outlived its failed batch"

        with psycopg.connect(url, autocommit=True) as new_marker:
            assert _relay(relay_env).publish_batch(conn, new_marker) == 200 - 2 * CHUNK
    assert _event_ids_by_id(relay_env, published=False) == []
    _assert_republished_only(relay_env, set(ids), allowed=set(order[2 * CHUNK : 3 * CHUNK]))
