"""kill -9 a gateway worker (of two, sharing their breakers) and the callback worker again
and again, while deposits arrive at 100/s: nothing lost, nothing done twice, the books
exact."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.stack import Stack, extra_gateway_worker, running_stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

RATE = 100.0  # deposits offered per second, open loop
COMMANDS = 1200
PENDING_SHARE = 5  # every 5th deposit is settled by a provider callback, not the answer
KILLS = {"worker gateway": 3, "worker callback": 3}
KEY = re.compile(r"^ps-([0-9a-f-]{36})-\d+$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with a second gateway worker in the group: the stack's own one is killed,
    the second takes its partitions meanwhile and goes on calling the gateways."""
    tmp = tmp_path_factory.mktemp("crash")
    with running_stack(tmp) as s, extra_gateway_worker(s, tmp) as second:
        second.wait_assigned()
        yield s


def _settled(stack: Stack) -> int:
    rows = stack.query(
        "SELECT count(*) FROM transactions"
        " WHERE status NOT IN ('received', 'processing', 'pending')"
    )
    return int(rows[0][0])


def _offer(stack: Stack) -> tuple[list[uuid.UUID], float]:
    """POST the deposits on a fixed schedule (open loop); returns their ids and the rate
    they were actually sent at."""
    countries = list(DEPOSIT_ROUTES)

    def post(i: int) -> uuid.UUID:
        pending = {"sandbox_scenario": "pending"} if i % PENDING_SHARE == 0 else None
        country = countries[i % len(countries)]
        return stack.deposit(country, account=f"crash-{i % 50}", metadata=pending)

    futures: list[Future[uuid.UUID]] = []
    with ThreadPoolExecutor(32) as pool:
        started = time.monotonic()
        for i in range(COMMANDS):
            ahead = started + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the schedule, not waiting for anything
            futures.append(pool.submit(post, i))
        txns = [f.result() for f in futures]
    return txns, COMMANDS / (time.monotonic() - started)


def _kill_while_busy(stack: Stack, done: threading.Event, rng: random.Random) -> Counter[str]:
    """Kill each worker KILLS times at random moments while deposits arrive."""
    kills: Counter[str] = Counter()
    plan = [name for name, n in KILLS.items() for _ in range(n)]
    rng.shuffle(plan)
    for name in plan:
        if done.wait(rng.uniform(0.8, 1.8)):
            break
        pid = wait_for(lambda n=name: _running(stack, n), timeout=60, what=f"{name} to run")  # type: ignore[misc]
        os.kill(pid, signal.SIGKILL)
        kills[name] += 1
    return kills


def _running(stack: Stack, name: str) -> int | None:
    try:
        return stack.service_pid(name)
    except AssertionError:
        return None


def test_kill_9_the_workers_under_load_moves_no_money_twice(stack: Stack) -> None:
    done = threading.Event()
    rng = random.Random(7)
    with ThreadPoolExecutor(1) as killer:
        kills_future = killer.submit(_kill_while_busy, stack, done, rng)
        txns, sent_rate = _offer(stack)
        done.set()
        kills = kills_future.result()
    assert sum(kills.values()) >= 3, f"only {dict(kills)} kills happened during the load"
    assert len(set(txns)) == COMMANDS

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
    # The callback worker's too: every callback it was given is handled and committed.
    callbacks = ("callbacks", "paystream-callback-worker")
    try:
        wait_for(
            lambda: all(c >= high for _, c, high in _offsets(stack, *callbacks)),
            timeout=60,
            interval=0.5,
            what="callback offsets",
        )
    except AssertionError:
        raise AssertionError(f"not caught up: {_offsets(stack, *callbacks)}") from None
    print(
        f"\ncrash test: {COMMANDS} deposits sent at {sent_rate:.0f}/s, kills {dict(kills)},"
        f" statuses {dict(statuses)}"
    )


def _offsets(
    stack: Stack, topic_name: str = "commands", group: str = "paystream-gateway-worker"
) -> list[tuple[int, int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{stack.env['PAYSTREAM_TOPIC_PREFIX']}.{topic_name}"
    consumer = Consumer(
        {"bootstrap.servers": stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"], "group.id": group}
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
