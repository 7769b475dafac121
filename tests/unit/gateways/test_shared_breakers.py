"""pybreaker over the shared view (through an in-memory log): failures count across
workers, a success on a healthy gateway publishes nothing, and after the open period one
call of one worker probes while every other call is refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pybreaker
import pytest

from paystream_gateways.errors import Ambiguous, AmbiguousReason, NotExecuted, NotExecutedReason
from paystream_gateways.resilience import call_with_resilience
from paystream_gateways.shared_breakers import SharedBreakers
from paystream_messaging.gateway_health import HealthRecord, Lease, same_breaker
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

    def entry(self) -> HealthRecord:
        entry = self.view.entry(GW)
        assert entry is not None
        return entry


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
    assert sorted([await first, await second]) == ["denied", "granted"]
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
    assert a.probes == Counter({"timeout": 1})


async def test_a_dead_holders_lease_expires_and_another_worker_probes(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    assert await a.view.claim(GW, until=clock.now + 20, timeout_s=2) == "granted"  # a dies
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


# --- a call that ends late, and views that lag (review of issue 14, item 1) ---------------


def gated() -> tuple[asyncio.Event, Callable[[], Awaitable[str]], Callable[[], Awaitable[str]]]:
    """A gate and two calls held until it opens: one that then succeeds, one that fails
    after sending (a hanging gateway's read timeout)."""
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    async def slow_timeout() -> str:
        await gate.wait()
        return await timeout()

    return gate, slow_ok, slow_timeout


async def sent_to_log(log: HealthLog, event: str) -> None:
    await until(lambda: bool(log.records) and log.records[-1].event == event)


async def test_a_late_failure_while_a_probe_is_claimed_does_not_reopen_or_loop(
    log: HealthLog, clock: Clock
) -> None:
    """The reviewer's reproduction (RecursionError before the fix): b's call, admitted while
    closed, fails after the open period with a's claim on its way; a probes once, closes
    it, and every later call of both goes through."""
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    log.auto = False
    gate, _, slow_timeout = gated()
    stale = asyncio.create_task(b.call(slow_timeout))
    await until(lambda: b.sent == 1)
    await fail(a, FAIL_MAX, log)
    clock.now += RESET_S + 1
    probe = asyncio.create_task(a.call(ok))
    await sent_to_log(log, "claim")
    gate.set()
    with pytest.raises(Ambiguous):
        await stale
    assert [r.event for r in log.records[-1:]] == ["claim"], "b's late failure published nothing"
    log.deliver()
    assert await probe == "ok"
    await settle(log)
    assert a.state() == b.state() == "closed"
    assert await a.call(ok) == await b.call(ok) == "ok"
    assert a.probes == Counter({"granted": 1, "succeeded": 1})


async def test_a_late_failure_during_the_probe_leaves_the_holders_probe_alone(
    log: HealthLog, clock: Clock
) -> None:
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    stale_gate, _, slow_timeout = gated()
    gate, slow_ok, _ = gated()
    stale = asyncio.create_task(b.call(slow_timeout))  # admitted while closed
    await until(lambda: b.sent == 1)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    probe = asyncio.create_task(a.call(slow_ok))
    await until(lambda: a.sent == 1)
    await settle(log)
    assert b.state() == "half_open"
    published = len(log.records)
    # b's call fails late while a probes: it neither reopens nor extends anything
    stale_gate.set()
    with pytest.raises(Ambiguous):
        await stale
    await settle(log)
    assert len(log.records) == published
    assert b.entry().state == "half_open"
    gate.set()
    assert await probe == "ok"
    await settle(log)
    assert a.state() == b.state() == "closed"


async def test_our_lease_held_while_a_late_open_lands_after_the_grant(
    log: HealthLog, clock: Clock
) -> None:
    """b's view lags (it never saw the open) and it opens the breaker again right after a's
    claim: a's granted probe is refused before sending, and once the new period is over
    a claims anew (its old lease is still unexpired) and probes."""
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await fail(b, FAIL_MAX - 1, log)
    log.lagging.add("b")
    await fail(a, 1, log)
    assert (a.state(), b.state()) == ("open", "closed")
    a.sent = 0
    clock.now += RESET_S + 1
    log.auto = False
    probe = asyncio.create_task(a.call(ok))
    await sent_to_log(log, "claim")
    with pytest.raises(NotExecuted):
        await b.call(refused)  # from its closed view: the 5th failure, it opens
    assert log.records[-1].event == "open"
    log.lagging.clear()
    log.deliver()  # the claim (granted) and b's open, in one batch
    with pytest.raises(NotExecuted) as refusal:
        await probe
    assert refusal.value.reason == NotExecutedReason.BREAKER_OPEN
    assert a.sent == 0, "refused before sending"
    assert a.entry().state == "open"
    assert a.entry().lease_held(clock.now) == Lease("a", clock.now + 20.0)
    clock.now += RESET_S + 1
    log.auto = True
    assert await a.call(ok) == "ok"
    assert a.sent == 1
    await settle(log)
    assert a.state() == b.state() == "closed"
    assert a.probes == Counter({"granted": 2, "succeeded": 1})


async def test_an_open_whose_period_is_already_over_after_the_grant_is_refused_not_looped(
    log: HealthLog, clock: Clock
) -> None:
    """Same, from a worker whose clock is behind: its open's period is over by our clock, so
    pybreaker's own check passes; the shared view is not half-open, so the call is refused
    (it used to go open -> half-open -> open until RecursionError)."""
    a = Worker(log, "a", clock)
    behind = Clock()
    b = Worker(log, "b", behind)
    await fail(b, FAIL_MAX - 1, log)
    log.lagging.add("b")
    await fail(a, 1, log)
    a.sent = 0
    clock.now += RESET_S + 1
    behind.now = clock.now - 3 * RESET_S
    log.auto = False
    probe = asyncio.create_task(a.call(ok))
    await sent_to_log(log, "claim")
    with pytest.raises(NotExecuted):
        await b.call(refused)
    log.lagging.clear()
    log.deliver()
    with pytest.raises(NotExecuted) as refusal:
        await probe
    assert refusal.value.reason == NotExecutedReason.BREAKER_OPEN
    assert a.sent == 0


async def test_pybreakers_own_open_period_check_reads_the_same_clock(
    log: HealthLog, clock: Clock
) -> None:
    """Straight through pybreaker (no admission): refused while our clock is before
    open_until, and after it still refused without a lease in the shared view."""
    a = Worker(log, "a", clock)
    await open_it([a], log)
    breaker = a.breakers.of(GW)
    for moved in (RESET_S - 1, 2):
        clock.now += moved
        with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
            a.sent += 1
    assert a.sent == 0


async def test_a_claim_granted_after_its_wait_is_taken_up_and_counted_once(
    log: HealthLog, clock: Clock
) -> None:
    a = Worker(log, "a", clock, claim_wait_s=0.01)
    await open_it([a], log)
    clock.now += RESET_S + 1
    log.auto = False
    with pytest.raises(NotExecuted):
        await a.call(ok)  # the claim is not back in time
    log.deliver()  # ... and then comes back granted
    log.auto = True
    assert await a.call(ok) == "ok"
    assert a.probes == Counter({"timeout": 1, "granted": 1, "succeeded": 1})


async def test_an_own_record_the_log_took_less_of_is_restated(log: HealthLog, clock: Clock) -> None:
    """A denied claim kept as the last record of its key would read as granted in a view
    started after compaction: its publisher restates the entry, which a view reading only
    that record takes whole."""
    a, b = Worker(log, "a", clock), Worker(log, "b", clock)
    await open_it([a, b], log)
    clock.now += RESET_S + 1
    log.auto = False
    first = asyncio.create_task(a.view.claim(GW, until=clock.now + 20, timeout_s=2))
    second = asyncio.create_task(b.view.claim(GW, until=clock.now + 20.5, timeout_s=2))
    await asyncio.sleep(0)
    log.deliver()
    assert (await first, await second) == ("granted", "denied")
    restate = log.records[-1]
    assert (restate.event, restate.by) == ("restate", "b")
    log.deliver()
    assert a.view.entry(GW) == b.view.entry(GW), "a restate changes no view that read the log"
    compacted = Worker(log, "compacted", clock)
    compacted.view.receive([restate])
    assert same_breaker(compacted.entry(), a.entry())
    assert compacted.entry().lease == Lease("a", clock.now + 20)
    published = len(log.records)
    await settle(log)
    assert len(log.records) == published, "granted claims and restates are not restated"
