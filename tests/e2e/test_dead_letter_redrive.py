"""`paystream dead-letters` on a running dev stack, as an operator runs it (a process).

A deposit command produced straight to Kafka for a tenant that does not exist yet is
dead-lettered `unknown_tenant`; once the tenant exists with its connections, redriving it
makes it succeed, and the same dead letter is not redriven twice by accident. A poison
record redriven goes back to the dead letters with count 2 and stays there. Under a
minute, most of it `paystream dead-letters` processes starting.

On the shared stack (tests/e2e/conftest.py): other modules' dead letters are in the topic
too, so each test finds its own by their record key (an account of its own); the tenant it
creates is one more tenant beside the demo one. The commands topic, which it counts around
a redrive, gets records only when a test sends them, and modules run one at a time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Producer

from paystream_cli import demo_connections
from paystream_config import DatabaseSettings
from paystream_core.ids import payload_hash, transaction_id
from paystream_keyring import KeyRing, ensure_dev_keyring
from paystream_messaging.cloudevents_codec import KafkaRecord, encode
from paystream_messaging.commands import RequestDeposit
from paystream_messaging.dead_letters import DeadLetter, read_all, reader_config
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.models import Tenant
from tests.e2e.stack import TERMINAL, Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


def paystream(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`paystream dead-letters ARGS` with the stack's settings, as a separate process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    for name in ("PAYSTREAM_KAFKA_BOOTSTRAP", "PAYSTREAM_DATABASE_URL", "PAYSTREAM_TOPIC_PREFIX"):
        env[name] = stack.env[name]
    return subprocess.run(
        [sys.executable, "-m", "paystream_cli.main", "dead-letters", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def as_json(stack: Stack, *args: str) -> Any:
    done = paystream(stack, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def topic(stack: Stack, name: str) -> str:
    return f"{stack.env['PAYSTREAM_TOPIC_PREFIX']}.{name}"


def everything(stack: Stack, name: str) -> list[DeadLetter]:
    """Every record of a topic, read to the end of each partition."""
    config = reader_config(stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"], "test-e2e")
    return list(read_all(config, topic(stack, name)))


def produce(stack: Stack, record: KafkaRecord) -> None:
    producer = Producer(
        {"bootstrap.servers": stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"], "enable.idempotence": True}
    )
    failed: list[str] = []
    producer.produce(
        topic(stack, "commands"),
        key=record.key,
        value=record.value,
        headers=list[tuple[str, str | bytes | None]](record.headers),
        on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
    )
    assert producer.flush(30) == 0
    assert not failed, failed


def dead_letter_for(stack: Stack, account: str, *, count: int = 1) -> DeadLetter:
    def found() -> DeadLetter | None:
        ours = [
            d
            for d in everything(stack, "dead-letters")
            if d.key == account.encode() and d.count == count
        ]
        return ours[0] if ours else None

    return wait_for(found, timeout=60, interval=0.2, what=f"dead letter of {account} #{count}")


def deposit_for(tenant: uuid.UUID, account: str) -> tuple[uuid.UUID, KafkaRecord]:
    key = f"redrive-{uuid.uuid4().hex}"
    txn = transaction_id(tenant, key)
    command = RequestDeposit(
        transaction_id=txn,
        tenant_id=tenant,
        idempotency_key=key,
        payload_hash=payload_hash({"type": "deposit", "account_id": account, "amount_minor": 1250}),
        account_id=account,
        country="DE",
        amount_minor=1250,
        currency="EUR",
        requested_at=datetime.now(UTC),
        payment_method="pm_card_visa",
    )
    return txn, encode(command.to_event(source="/test/redrive"), SchemaRegistry())


def create_tenant_with_connections(stack: Stack, tenant: uuid.UUID) -> None:
    """What `paystream dev` does for the demo tenant, for this tenant id."""
    ring = KeyRing.from_settings(ensure_dev_keyring(stack.home))
    db = DatabaseSettings(database_url=stack.env["PAYSTREAM_DATABASE_URL"])

    async def create() -> None:
        engine = create_engine(db)
        try:
            async with sessionmaker(engine)() as session, session.begin():
                session.add(Tenant(id=tenant, name=f"late-{tenant.hex[:12]}"))
                await session.flush()
                await demo_connections.provision(
                    session,
                    ring,
                    tenant,
                    sandbox_url=stack.env["PAYSTREAM_SANDBOX_URL"],
                    callback_url=stack.env["PAYSTREAM_CALLBACK_URL"],
                )
        finally:
            await engine.dispose()

    asyncio.run(create())


def redrive_rows(stack: Stack, letter: DeadLetter) -> int:
    [(count,)] = stack.query(
        "SELECT count(*) FROM dead_letter_redrives"
        " WHERE dead_letter_partition = %s AND dead_letter_offset = %s",
        letter.partition,
        letter.offset,
    )
    return int(count)


def test_unknown_tenant_redriven_once_the_tenant_exists_succeeds(stack: Stack) -> None:
    tenant, account = uuid.uuid4(), f"late-{uuid.uuid4().hex[:8]}"
    txn, record = deposit_for(tenant, account)
    produce(stack, record)
    letter = dead_letter_for(stack, account)
    assert letter.reason.startswith("unknown_tenant")

    listed = as_json(stack, "list", "--reason", "unknown_tenant", "--topic", "commands")
    [row] = [r for r in listed["dead_letters"] if r["id"] == letter.id]
    assert row["original"]["topic"] == topic(stack, "commands")
    assert row["type"] == "paystream.deposit.requested.v1"
    assert row["key"] == {"text": account}

    # --dry-run changes nothing: no record sent, nothing logged, still unknown.
    commands_before = len(everything(stack, "commands"))
    dry = paystream(stack, "redrive", letter.id, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would redrive" in dry.stdout
    assert len(everything(stack, "commands")) == commands_before
    assert redrive_rows(stack, letter) == 0
    assert stack.query("SELECT 1 FROM transactions WHERE id = %s", txn) == []

    create_tenant_with_connections(stack, tenant)
    done = as_json(stack, "redrive", letter.id)
    assert done["summary"] == {"redriven": 1}
    assert done["results"][0]["published"]["topic"] == topic(stack, "commands")

    def status() -> str | None:
        rows = stack.query("SELECT status FROM transactions WHERE id = %s", txn)
        return str(rows[0][0]) if rows and rows[0][0] in TERMINAL else None

    assert wait_for(status, timeout=60, interval=0.2, what=f"{txn} finished") == "succeeded"

    # The same dead letter again, by accident: refused, nothing sent.
    again = paystream(stack, "redrive", letter.id)
    assert again.returncode == 1
    assert "already redriven" in again.stdout
    assert redrive_rows(stack, letter) == 1
    assert len(everything(stack, "commands")) == commands_before + 1


def test_a_poison_record_redriven_comes_back_with_count_two(stack: Stack) -> None:
    account = f"poison-{uuid.uuid4().hex[:8]}"
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_source", b"/test/redrive"),
        ("ce_type", b"paystream.deposit.requested.v1"),
        ("ce_time", b"2026-01-01T00:00:00Z"),
        ("ce_tenantid", stack.env["PAYSTREAM_DEMO_TENANT_ID"].encode()),
        ("ce_partitionkey", account.encode()),
        ("content-type", b"application/json"),
    ]
    produce(stack, KafkaRecord(account.encode(), b"not json at all", headers))
    first = dead_letter_for(stack, account)
    assert first.reason.startswith("invalid_event")

    done = as_json(stack, "redrive", first.id)
    assert done["summary"] == {"redriven": 1}
    sent = done["results"][0]["published"]

    second = dead_letter_for(stack, account, count=2)
    assert (second.original_partition, second.original_offset) == (
        sent["partition"],
        sent["offset"],
    )
    shown = as_json(stack, "show", second.id)
    assert shown["count"] == 2
    assert shown["reason_code"] == "invalid_event"
    assert {"name": "dlq_redrives", "text": "1"} in shown["headers"]
    assert shown["value"] == {"text": "not json at all"}
    # Nothing redrives by itself: the poison record stays a dead letter, no third one.
    listed = as_json(stack, "list", "--reason", "invalid_event")["dead_letters"]
    ours = [r for r in listed if r["key"] == {"text": account}]
    assert sorted(r["count"] for r in ours) == [1, 2]
    assert [r["redriven"] for r in ours if r["count"] == 1] == [1]
