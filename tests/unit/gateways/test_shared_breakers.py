"""pybreaker over the shared view (through an in-memory log): failures count across
workers, a success on a healthy gateway publishes nothing, and after the open period one
call of one worker probes while every other call is refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from paystream_gateways.errors import Ambiguous, AmbiguousReason, NotExecuted, NotExecutedReason
from paystream_gateways.resilience import call_with_resilience
from paystream_gateways.shared_breakers import SharedBreakers
from tests.unit.gateways.health_log import HealthLog

GW = "jsonpay"
FAIL_MAX = 5
RESET_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """One worker process: its view of the shared log, its breakers, its probe counts."""

    def __init__(self, log: HealthLog, name: str, clock: Clock, claim_wait_s: float = 2.0):
        self.view = log.worker(name, clock=clock)
        self.probes: Counter[str] = Counter()
        self.breakers = SharedBreakers(
            self.view,
            FAIL_MAX,
            RESET_S,
            lease_s=20.0,
            claim_wait_s=claim_wait_s,
            on_probe=lambda _gw, result: self.probes.update([result]),
            clock=clock,
        )
        self.sent = 0

    async def call(self, answer: Callable[[], Awaitable[str]], attempts: int = 1) -> str:
        async def counted() -> str:
            self.sent += 1
            return await answer()

        return await call_with_resilience(
            self.breakers.of(GW), counted, attempts=attempts, base_s=0.0, max_s=0.0, gateway=GW
        )

    def state(self) -> str:
        entry = self.view.entry(GW)
        return entry.state if entry is not None else "closed"


async def ok() -> str:
    return "ok"


async def refused() -> str:
    raise NotExecuted(GW, NotExecutedReason.CONNECT_FAILED, "connection refused")


async def timeout() -> str:
    raise Ambiguous(GW, AmbiguousReason.TIMEOUT, "read timeout after sending")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> HealthLog:
    return HealthLog()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the loop run until `condition` holds (or fail after `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def settle(log: HealthLog) -> None:
    """Let the log's deliveries (scheduled on the loop) run."""
    log.deliver()
    await asyncio.sleep(0)


async def fail(worker: Worker, n: int, log: HealthLog) -> None:
    for _ in range(n):
        with pytest.raises(NotExecuted):
            await worker.call(refused)
        await settle(log)


async def open_it(workers: list[Worker], log: HealthLog) -> None:
    await fail(workers[0], FAIL_MAX, log)
    assert all(w.state() == "open" for w in workers)
    for worker in workers:
        worker.sent = 0  # count what is sent from here on


async def test_failures_of_two_workers_add_up_and_open_it_in_both(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await fail(a, 3, log)
    await fail(b, 2, log)
    assert a.state() == b.state() == "open"
    opened = a.view.entry(GW)
    assert opened is not None
    assert (opened.failures, opened.open_until, opened.by) == (5, clock.now + RESET_S, "b")
    assert opened.reason == "5 consecutive failures: jsonpay: connect_failed: connection refused"
    before = a.sent + b.sent
    for worker in (a, b):
        with pytest.raises(NotExecuted) as refusal:
            await worker.call(ok)
        assert refusal.value.reason == NotExecutedReason.BREAKER_OPEN
    assert a.sent + b.sent == before, "an open breaker sends nothing, in any worker"


async def test_success_on_a_healthy_breaker_publishes_nothing(log: HealthLog, clock: Clock) -> None:
    a = Worker(log, "a", clock)
    for _ in range(100):
        assert await a.call(ok) == "ok"
    assert log.records == []
    await fail(a, 2, log)
    assert await a.call(ok) == "ok"
    assert [r.event for r in log.records] == ["failure", "failure", "reset"]
    assert await a.call(ok) == "ok"
    assert len(log.records) == 3, "back at 0 failures: nothing more to say"


async def test_a_worker_restarted_sees_the_open_breaker(log: HealthLog, clock: Clock) -> None:
    await open_it([Worker(log, "a", clock)], log)
    late = Worker(log, "late", clock)
    log.deliver()  # it reads the topic before it takes commands
    with pytest.raises(NotExecuted):
        await late.call(ok)
    assert late.sent == 0


async def test_after_the_open_period_one_call_of_one_worker_probes(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    calls = [asyncio.create_task(w.call(slow_ok)) for w in (a, a, a, b, b, b)]
    await until(lambda: sum(c.done() for c in calls) == 5)  # all but the probe refused
    assert a.sent + b.sent == 1, "one probe in all"
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results.count("ok") == 1
    refusals = [r for r in results if isinstance(r, NotExecuted)]
    assert len(refusals) == 5
    assert all(r.reason == NotExecutedReason.BREAKER_OPEN for r in refusals)
    await settle(log)
    assert a.state() == b.state() == "closed"
    assert (a.probes + b.probes)["succeeded"] == 1
    assert (a.probes + b.probes)["granted"] == 1
    assert await b.call(ok) == "ok", "closed again for everyone"


async def test_concurrent_claims_of_two_workers_grant_exactly_one(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    log.auto = False  # both claims reach the log before either comes back
    first = asyncio.create_task(a.view.claim(GW, until=clock.now + 20, timeout_s=2))
    second = asyncio.create_task(b.view.claim(GW, until=clock.now + 20.5, timeout_s=2))
    await asyncio.sleep(0)
    log.deliver()
    assert sorted([await first, await second]) == [False, True]
    assert a.view.entry(GW) == b.view.entry(GW)


async def test_a_failed_probe_reopens_for_a_new_period(log: HealthLog, clock: Clock) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    with pytest.raises(NotExecuted):
        await b.call(refused)
    await settle(log)
    entry = a.view.entry(GW)
    assert entry is not None
    assert (entry.state, entry.lease, entry.open_until) == ("open", None, clock.now + RESET_S)
    assert entry.reason == "probe failed: jsonpay: connect_failed: connection refused"
    assert b.probes == Counter({"granted": 1, "failed": 1})
    sent = b.sent
    with pytest.raises(NotExecuted):
        await b.call(ok)
    assert b.sent == sent


async def test_a_claim_that_never_comes_back_is_a_refusal(log: HealthLog, clock: Clock) -> None:
    a = Worker(log, "a", clock, claim_wait_s=0.05)
    await open_it([a], log)
    clock.now += RESET_S + 1
    log.lost = True  # the broker is away: the claim is never seen
    with pytest.raises(NotExecuted) as refusal:
        await a.call(ok)
    assert refusal.value.reason == NotExecutedReason.BREAKER_OPEN
    assert a.sent == 0
    assert a.probes == Counter({"denied": 1})


async def test_a_dead_holders_lease_expires_and_another_worker_probes(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    assert await a.view.claim(GW, until=clock.now + 20, timeout_s=2)  # a then dies
    await settle(log)
    with pytest.raises(NotExecuted):
        await b.call(ok)
    assert b.sent == 0
    clock.now += 21
    assert await b.call(ok) == "ok"
    await settle(log)
    assert a.state() == "closed"


async def test_an_ambiguous_probe_stays_ambiguous_when_its_retry_is_refused(
    log: HealthLog, clock: Clock
) -> None:
    """The ambiguity rule of call_with_resilience, unchanged with a shared breaker."""
    a = Worker(log, "a", clock)
    await open_it([a], log)
    clock.now += RESET_S + 1
    with pytest.raises(Ambiguous) as raised:
        await a.call(timeout, attempts=3)
    assert raised.value.reason == AmbiguousReason.TIMEOUT
    assert a.sent == 1, "the retry was refused by the reopened breaker"
