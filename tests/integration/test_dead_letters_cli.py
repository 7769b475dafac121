"""`paystream dead-letters list|show|redrive` on the real broker and PostgreSQL.

Dead letters are written the way the workers write them (`KafkaDeadLetters` over an
acknowledged publisher); the commands run in-process through click's runner."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from paystream_cli.main import cli
from paystream_config import KafkaSettings
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.dead_letters import read_all, reader_config
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.topics import ensure_topics
from paystream_streams.records import KafkaDeadLetters, RawRecord
from tests.support.databases import libpq
from tests.support.kafka import Received, consume_until

pytestmark = pytest.mark.integration

PARTITIONS = 3
CE = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"evt-1"),
    ("ce_source", b"/test"),
    ("ce_type", b"paystream.deposit.requested.v1"),
    ("ce_time", b"2026-01-01T00:00:00Z"),
    ("content-type", b"application/json"),
]


@dataclass
class Env:
    prefix: str
    bootstrap: str
    database_url: str
    vars: dict[str, str]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["dead-letters", *args], env=self.vars)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code in (0, 1), result.output
        return json.loads(result.stdout)

    def dead(self, *records: tuple[RawRecord, str]) -> None:
        """Dead-letter `records` as a worker does, acknowledged by Kafka."""
        settings = KafkaSettings(kafka_bootstrap=self.bootstrap, topic_prefix=self.prefix)

        async def send() -> None:
            publisher = AsyncPublisher(producer_config(settings, "test-worker"))
            try:
                letters = KafkaDeadLetters(
                    publisher, f"{self.prefix}.dead-letters", by="test-worker"
                )
                for record, reason in records:
                    await letters.send(record, reason)
            finally:
                publisher.close()

        asyncio.run(send())

    def redrives(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            return conn.execute(
                "SELECT dead_letter_partition, dead_letter_offset, redrive_count, forced,"
                " published_offset IS NOT NULL FROM dead_letter_redrives ORDER BY id"
            ).fetchall()

    def commands(self, count: int) -> list[Received]:
        return consume_until(
            self.bootstrap, f"{self.prefix}.commands", lambda rs: len(rs) >= count, timeout=30
        )

    def commands_total(self) -> int:
        """Records on the commands topic, read to the end of every partition (tansu's
        ListOffsets watermark falls short after a batched produce, so it is not used)."""
        config = reader_config(self.bootstrap, "test-count")
        return sum(1 for _ in read_all(config, f"{self.prefix}.commands"))


@pytest.fixture
def env(kafka_bootstrap: str, primary_database_url: str) -> Env:
    prefix = f"dl{uuid.uuid4().hex[:10]}"
    ensure_topics(
        KafkaSettings(
            kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, topic_partitions=PARTITIONS
        )
    )
    return Env(
        prefix,
        kafka_bootstrap,
        primary_database_url,
        {
            "PAYSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "PAYSTREAM_TOPIC_PREFIX": prefix,
            "PAYSTREAM_DATABASE_URL": primary_database_url,
        },
    )


def command(env: Env, offset: int, *, key: str = "acct-1", value: bytes = b"{}") -> RawRecord:
    headers = [*CE, ("ce_tenantid", str(uuid.uuid4()).encode())]
    return RawRecord(f"{env.prefix}.commands", 1, offset, key.encode(), value, headers)


def three(env: Env) -> None:
    callback = RawRecord(
        f"{env.prefix}.callbacks", 0, 7, b"stripe", b"\xff\xfe binary", [("x-sig", b"s")]
    )
    env.dead(
        (command(env, 10), "unknown_tenant: no tenant 42"),
        (command(env, 11, key="acct-2", value=b"not json"), "invalid_event: not JSON"),
        (callback, "processing_failed: RuntimeError: boom"),
    )


def test_list_filters_and_json(env: Env) -> None:
    empty = env.run("list")
    assert empty.exit_code == 0, empty.output
    assert "no dead letter" in empty.stdout
    three(env)

    table = env.run("list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "AGE", "COUNT", "REDRIVEN"]
    assert len(lines) == 4
    assert f"{env.prefix}.commands[1]@10" in table.stdout
    assert "paystream.deposit.requested.v1" in table.stdout
    assert "acct-2" in table.stdout
    assert "processing_failed: RuntimeError: boom" in table.stdout

    rows = env.json("list")["dead_letters"]
    assert [r["reason_code"] for r in rows] == [
        "unknown_tenant",
        "invalid_event",
        "processing_failed",
    ]
    first = rows[0]
    assert first["original"] == {"topic": f"{env.prefix}.commands", "partition": 1, "offset": 10}
    assert first["key"] == {"text": "acct-1"}
    assert first["type"] == "paystream.deposit.requested.v1"
    assert first["count"] == 1
    assert first["redriven"] == 0
    assert first["by"] == "test-worker"
    assert 0 <= first["age_s"] < 600
    partition, offset = first["id"].split(":")
    assert 0 <= int(partition) < PARTITIONS
    assert int(offset) >= 0
    assert len({r["id"] for r in rows}) == 3

    def ids(*args: str) -> list[str]:
        return [r["reason_code"] for r in env.json("list", *args)["dead_letters"]]

    assert ids("--reason", "unknown_tenant") == ["unknown_tenant"]
    assert ids("--reason", "invalid_event: not") == ["invalid_event"]
    assert ids("--topic", "callbacks") == ["processing_failed"]
    assert ids("--topic", f"{env.prefix}.commands") == ["unknown_tenant", "invalid_event"]
    assert ids("--since", "1h") == ["unknown_tenant", "invalid_event", "processing_failed"]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert ids("--since", later) == []
    assert ids("--topic", "commands", "--reason", "processing_failed") == []

    bad = env.run("list", "--since", "yesterday-ish")
    assert bad.exit_code == 2
    assert "--since" in bad.output


def test_show_in_full_and_unknown_ids(env: Env) -> None:
    three(env)
    rows = {r["reason_code"]: r for r in env.json("list")["dead_letters"]}

    shown = env.run("show", rows["unknown_tenant"]["id"])
    assert shown.exit_code == 0, shown.output
    assert "unknown_tenant: no tenant 42" in shown.stdout
    assert f"{env.prefix}.commands[1]@10" in shown.stdout
    assert "ce_type: paystream.deposit.requested.v1" in shown.stdout
    assert "dlq_count: 1" in shown.stdout
    assert "redrives      none" in shown.stdout

    binary = env.json("show", rows["processing_failed"]["id"])
    assert binary["value"] == {"base64": "//4gYmluYXJ5"}
    assert {"name": "x-sig", "text": "s"} in binary["headers"]
    assert binary["dead_letter"]["topic"] == f"{env.prefix}.dead-letters"
    assert binary["redrives"] == []

    missing = env.run("show", "0:999999")
    assert missing.exit_code == 1
    assert "no dead letter 0:999999" in missing.stderr
    assert env.run("show", "not-an-id").exit_code == 2
    assert env.run("show", f"{PARTITIONS + 5}:0").exit_code == 1


def test_redrive_sends_the_original_once_unless_forced(env: Env) -> None:
    three(env)
    rows = {r["reason_code"]: r for r in env.json("list")["dead_letters"]}
    target = rows["unknown_tenant"]["id"]

    dry = env.run("redrive", target, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would redrive" in dry.stdout
    assert env.redrives() == []
    assert env.commands_total() == 0

    done = env.json("redrive", target)
    assert done["summary"] == {"redriven": 1}
    published = done["results"][0]["published"]
    assert published["topic"] == f"{env.prefix}.commands"
    [sent] = env.commands(1)
    assert (sent.partition, sent.offset) == (published["partition"], published["offset"])
    assert sent.key == b"acct-1"
    assert sent.value == b"{}"
    assert [k for k in sent.headers if not k.startswith("dlq_")] == [
        *(k for k, _ in CE),
        "ce_tenantid",
    ]
    assert sent.headers["ce_type"] == b"paystream.deposit.requested.v1"
    assert sent.headers["dlq_redrives"] == b"1"
    assert not {"dlq_reason", "dlq_topic", "dlq_count"} & set(sent.headers)
    partition, offset = (int(x) for x in target.split(":"))
    assert env.redrives() == [(partition, offset, 1, False, True)]

    again = env.run("redrive", target)
    assert again.exit_code == 1
    assert "already redriven" in again.stdout
    assert "--force" in again.stdout
    assert env.commands_total() == 1
    assert env.run("redrive", target, "--dry-run").exit_code == 1  # it would be refused

    listed = env.json("list", "--reason", "unknown_tenant")["dead_letters"]
    assert listed[0]["redriven"] == 1
    shown = env.run("show", target)
    assert f"sent to {env.prefix}.commands[{partition_of(sent)}]@{sent.offset}" in shown.stdout

    forced = env.run("redrive", target, "--force")
    assert forced.exit_code == 0, forced.output
    assert env.commands_total() == 2
    assert [r[3] for r in env.redrives()] == [False, True]


def partition_of(record: Received) -> int:
    return record.partition


def test_a_record_dead_lettered_twice_is_redriven_once(env: Env) -> None:
    # A worker may send one dead letter twice (at least once): one redrive covers both.
    record = command(env, 20, key="acct-9")
    env.dead((record, "unknown_tenant: no tenant x"), (record, "unknown_tenant: no tenant x"))
    result = env.run("redrive", "--reason", "unknown_tenant")
    assert result.exit_code == 1
    assert "redriven to" in result.stdout
    assert "same record as dead letter" in result.stdout
    assert env.commands_total() == 1
    again = env.run("redrive", "--reason", "unknown_tenant")
    assert again.exit_code == 1
    assert again.stdout.count("already redriven") == 2
    assert "already redriven (as dead letter" in again.stdout
    assert env.commands_total() == 1


def test_redrive_needs_a_selection_and_reports_progress(env: Env) -> None:
    assert env.run("redrive").exit_code == 2
    assert env.run("redrive", "0:1", "--reason", "x").exit_code == 2
    assert env.run("redrive", "zero").exit_code == 2
    missing = env.run("redrive", "0:424242")
    assert missing.exit_code == 1
    assert "nothing was redriven" in missing.stderr
    nothing = env.run("redrive", "--all")
    assert nothing.exit_code == 0, nothing.output

    env.dead(*((command(env, 100 + i, key=f"acct-{i}"), "unknown_tenant: t") for i in range(25)))
    result = env.run("redrive", "--all", "--batch", "10")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("redrive: ")]
    assert progress[:3] == [
        "redrive: 10/25 (redriven 10)",
        "redrive: 20/25 (redriven 20)",
        "redrive: 25/25 (redriven 25)",
    ]
    assert env.commands_total() == 25
    assert len(env.redrives()) == 25
