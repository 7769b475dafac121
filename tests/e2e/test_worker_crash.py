"""kill -9 the gateway worker again and again while it works through 1,000 commands."""

from __future__ import annotations

import os
import random
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.stack import Stack, running_stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

COMMANDS = 1000
KILLS = 5
KEY = re.compile(r"^ps-([0-9a-f-]{36})-\d+$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("crash"), PAYSTREAM_WORKER_CONCURRENCY="32") as s:
        yield s


def _settled(stack: Stack) -> int:
    rows = stack.query("SELECT count(*) FROM transactions WHERE status <> 'processing'")
    return int(rows[0][0])


def test_kill_9_the_worker_repeatedly_moves_no_money_twice(stack: Stack) -> None:
    countries = list(DEPOSIT_ROUTES)
    with ThreadPoolExecutor(16) as pool:
        txns = list(
            pool.map(
                lambda i: stack.deposit(countries[i % len(countries)], account=f"crash-{i % 50}"),
                range(COMMANDS),
            )
        )
    rng = random.Random(7)
    kills = 0
    while kills < KILLS:
        pid = stack.service_pid("worker gateway")
        progress = _settled(stack)
        if progress >= COMMANDS:
            break
        # Let it work a little (a random amount), then kill it mid-flight.
        target = progress + rng.randint(5, 60)
        wait_for(
            lambda t=target: _settled(stack) >= t,  # type: ignore[misc]
            timeout=120,
            interval=0.05,
            what="the worker to make progress",
        )
        os.kill(pid, signal.SIGKILL)
        kills += 1
        wait_for(lambda p=pid: _restarted(stack, p), timeout=30, what="dev to restart the worker")  # type: ignore[misc]
    assert kills == KILLS, f"only {kills} kills before the work ran out: send more commands"

    wait_for(lambda: _settled(stack) >= COMMANDS, timeout=300, interval=0.5, what="all settled")
    statuses = Counter(status for (status,) in stack.query("SELECT status FROM transactions"))
    assert sum(statuses.values()) == COMMANDS, statuses
    assert set(statuses) <= {"succeeded", "failed", "rejected", "unknown"}, statuses

    # Exactly one terminal outcome event per terminal transaction (outbox rows are unique
    # by event id; the relay may republish one, consumers dedupe on that id).
    terminal_events = stack.query(
        "SELECT data->>'transaction_id', count(*) FROM outbox"
        " WHERE event_type IN ('paystream.transaction.succeeded.v1',"
        " 'paystream.transaction.failed.v1', 'paystream.transaction.rejected.v1')"
        " GROUP BY 1"
    )
    terminal = statuses["succeeded"] + statuses["failed"] + statuses["rejected"]
    assert len(terminal_events) == terminal
    assert all(count == 1 for _, count in terminal_events)

    # The sandbox executed at most one charge per transaction, exactly one per success.
    executed: Counter[str] = Counter()
    for entry in stack.ledger():
        match = KEY.match(entry["idempotency_key"] or "")
        if match and entry["status"] != "failed":
            executed[match[1]] += 1
    assert max(executed.values()) == 1, executed.most_common(3)
    succeeded = {
        str(t) for (t,) in stack.query("SELECT id FROM transactions WHERE status = 'succeeded'")
    }
    assert succeeded <= set(executed)

    # Money: every account's balance is the sum of its succeeded deposits.
    mismatches = stack.query(
        "SELECT b.account_id FROM balances b JOIN (SELECT account_id, currency,"
        " sum(amount_minor) AS total FROM transactions WHERE status = 'succeeded'"
        " GROUP BY 1, 2) t USING (account_id, currency) WHERE b.available_minor <> t.total"
    )
    assert mismatches == []
    assert len({str(t) for t in txns}) == COMMANDS

    # And the worker's offsets do catch up: commits are held back only while work is open.
    # (tansu's high watermark has been seen one behind its log end, hence the count check.)
    def caught_up() -> bool:
        offsets = _offsets(stack)
        committed = sum(c for _, c, _ in offsets)
        return committed == COMMANDS and all(c >= high for _, c, high in offsets)

    try:
        wait_for(caught_up, timeout=60, interval=0.5, what="committed offsets")
    except AssertionError:
        raise AssertionError(f"offsets not caught up: {_offsets(stack)}") from None
    print(f"\ncrash test: {KILLS} kills, statuses {dict(statuses)}")


def _offsets(stack: Stack) -> list[tuple[int, int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{stack.env['PAYSTREAM_TOPIC_PREFIX']}.commands"
    consumer = Consumer(
        {
            "bootstrap.servers": stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"],
            "group.id": "paystream-gateway-worker",
        }
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(6)]
        out = []
        for tp in consumer.committed(parts, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            out.append((tp.partition, max(tp.offset, 0), high))
        return out
    finally:
        consumer.close()


def _restarted(stack: Stack, old_pid: int) -> bool:
    try:
        return stack.service_pid("worker gateway") != old_pid
    except AssertionError:
        return False


_ = uuid  # ids come back from the API
