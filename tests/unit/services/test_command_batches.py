"""The gateway worker's batch pipeline: acks only when done, poison records isolated, per-
account order, nothing done twice on redelivery, and no ack for work cut off by a shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from paystream_core.statuses import AttemptStatus, Status
from paystream_gateway_worker.pipeline import take_in
from paystream_gateways.protocol import PaymentRequest
from paystream_streams.batching import Batches
from paystream_streams.records import RawRecord
from tests.support.scripted_gateways import ok
from tests.unit.services.worker_env import Env

pytestmark = pytest.mark.asyncio


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class FakeEvent:
    message: FakeMessage


@dataclass
class Acks:
    offsets: list[int] = field(default_factory=list)

    async def __call__(self, event: Any) -> None:
        self.offsets.append(event.message.offset)


def _event(record: RawRecord) -> FakeEvent:
    return FakeEvent(
        FakeMessage(
            record.topic, record.partition, record.offset, record.key, record.value, record.headers
        )
    )


async def _drive(env: Env, records: list[RawRecord], until: Callable[[Acks], bool]) -> Acks:
    acks = Acks()
    batches = Batches(acks, env.deps.metrics, batch_max=500, linger_s=0.05, max_in_flight=1000)
    async with batches.running(lambda b: take_in(env.deps, b)):
        for record in records:
            await batches.put(_event(record))
        await _wait(lambda: until(acks))
    return acks


async def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)  # poll interval, not a synchronisation


def _funded(env: Env, account: str, amount_minor: int) -> None:
    env.store.set_balance(env.tenant, account, available=amount_minor)


async def test_one_poison_and_one_conflict_in_a_batch_of_100_leave_98_processed(env: Env) -> None:
    env.gateway("gw_a", ok)
    commands = [env.command(account=f"a-{i}") for i in range(98)]
    first_key = "k-0"
    first_txn, first = env.command(account="a-x", key=first_key)
    _, conflict = env.command(account="a-x", key=first_key, amount_minor=999)
    poison = RawRecord("commands", 0, 10_000, b"k", b"not json", first.headers)
    records = [first, *[r for _, r in commands[1:]], poison, conflict]
    assert len(records) == 100
    acks = await _drive(env, records, lambda a: len(a.offsets) == 100)
    assert sorted(acks.offsets) == sorted(r.offset for r in records)
    done = [first_txn, *[t for t, _ in commands[1:]]]
    assert all(env.store.status(t) == Status.SUCCEEDED for t in done)
    assert len(done) == 98
    assert sorted(env.dead.reasons) == ["idempotency_conflict", "invalid_event"]
    assert env.store.transaction(first_txn).amount_minor == 1000, "first one wins"


async def test_two_withdrawals_of_one_account_in_a_batch_hold_in_offset_order(env: Env) -> None:
    env.gateway("gw_a", ok)
    _funded(env, "acc-1", 1500)
    first, w1 = env.command("withdrawal", amount_minor=1000)
    second, w2 = env.command("withdrawal", amount_minor=1000)
    await _drive(env, [w1, w2], lambda a: len(a.offsets) == 2)
    assert env.store.status(first) == Status.SUCCEEDED
    assert env.store.status(second) == Status.REJECTED, "the second hold found the funds taken"
    assert env.balance() == (500, 0)


async def test_a_redelivered_batch_does_nothing_twice(env: Env) -> None:
    a = env.gateway("gw_a", ok)
    commands = [env.command(account=f"a-{i}") for i in range(20)]
    records = [r for _, r in commands]
    await _drive(env, records, lambda acks: len(acks.offsets) == 20)
    calls = list(a.calls)
    events = {t: env.store.outcomes(t) for t, _ in commands}
    await _drive(env, records, lambda acks: len(acks.offsets) == 20)
    assert a.calls == calls, "no second provider call"
    assert {t: env.store.outcomes(t) for t, _ in commands} == events, "no second outcome"


async def test_work_cut_off_by_a_shutdown_is_not_acked(env: Env) -> None:
    started = asyncio.Event()
    never_answers = asyncio.Event()

    async def hang(request: PaymentRequest) -> None:
        started.set()
        await never_answers.wait()

    a = env.gateway("gw_a", ok)
    a.meanwhile = hang
    txn, record = env.command()
    acks = Acks()
    batches = Batches(acks, env.deps.metrics, batch_max=10, linger_s=0, max_in_flight=10)
    async with batches.running(lambda b: take_in(env.deps, b)):
        await batches.put(_event(record))
        await asyncio.wait_for(started.wait(), 5)
    assert acks.offsets == [], "cut off mid-call: redelivered and resumed later, never acked"
    assert env.store.status(txn) == Status.PROCESSING
    [attempt] = env.store.attempts_of(txn)
    assert attempt.status == AttemptStatus.STARTED


async def test_a_poison_record_is_dead_lettered_before_its_accounts_next_command(
    env: Env,
) -> None:
    """The batch is cut at the poison: what comes after it for the same account is stored
    only once its dead letter went out (and is not sent twice when a part fails)."""
    env.gateway("gw_a", ok)
    _, before = env.command(account="acc-1")
    poison = RawRecord("commands", 0, 10_000, b"acc-1", b"not json", before.headers)
    after_txn, after = env.command(account="acc-1")
    other_txn, other = env.command(account="acc-2")
    seen_at_dead_letter: list[bool] = []
    send = env.dead.send

    async def send_and_look(record: RawRecord, reason: str) -> None:
        seen_at_dead_letter.append(after_txn in env.store.state.transactions)
        await send(record, reason)

    env.dead.send = send_and_look  # type: ignore[method-assign]
    await _drive(env, [before, poison, after, other], lambda a: len(a.offsets) == 4)
    assert env.dead.reasons == ["invalid_event"]
    assert seen_at_dead_letter == [False], "the account's next command waited for it"
    assert env.store.status(after_txn) == Status.SUCCEEDED
    assert env.store.status(other_txn) == Status.SUCCEEDED
