"""Breakers shared by every gateway worker, end to end: a gateway whose provider is down is
called fail_max times in all (not fail_max per worker), every worker then refuses it, a
worker started while it is open does not call it, and after the open period one probe
closes it everywhere. Deposits succeed throughout on the next gateway (nothing was sent).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.stack import GatewayWorker, Stack, extra_gateway_worker, running_stack
from tests.support.asgi_server import free_port
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

COUNTRY = "GB"
GATEWAY = DEPOSIT_ROUTES[COUNTRY][0]  # jsonpay, then stripe
PROVIDER = "json"  # the sandbox provider behind it
FAIL_MAX = 3
# The open period must hold a third worker's start (process, health view, a 3-member
# rebalance) and its refusals with room to spare on a slow 2-core machine: 25 s was overrun
# there. The third worker starts as soon as the breaker opens, in parallel with the other
# deposits made while open, so only the remainder of the period is waited out.
RESET_S = 40
# A claim's round trip through the topic may take over the default 2 s on a loaded machine:
# the probe would then be granted after its call gave up (counted "timeout", then "granted"
# when taken up). Long enough that the one probe is granted while its call waits.
CLAIM_WAIT_S = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("shared-breakers"),
        PAYSTREAM_WORKER_WEB_PORT=str(free_port()),
        PAYSTREAM_BREAKER_FAIL_MAX=str(FAIL_MAX),
        PAYSTREAM_BREAKER_RESET_TIMEOUT_S=str(RESET_S),
        PAYSTREAM_BREAKER_CLAIM_WAIT_S=str(CLAIM_WAIT_S),
    ) as running:
        yield running


def _calls(stack: Stack) -> int:
    response = stack.sandbox.get("/calls")
    response.raise_for_status()
    return int(response.json().get(PROVIDER, 0))


def _breaker(worker: GatewayWorker) -> dict[str, Any] | None:
    body = worker.health()
    if body is None:
        return None
    entry: dict[str, Any] = body["breakers"].get(GATEWAY) or {"state": "closed", "failures": 0}
    return entry


def _agreed(workers: list[GatewayWorker]) -> dict[str, Any] | None:
    """The breaker, once every worker's view has the same one."""
    seen = [_breaker(w) for w in workers]
    if any(s is None for s in seen):
        return None
    first = seen[0]
    assert first is not None
    same = all(s == first for s in seen)
    return first if same else None


def _metric(worker: GatewayWorker, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(worker.metrics()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _deposit_succeeds(stack: Stack, account: str) -> dict[str, Any]:
    txn = stack.deposit(COUNTRY, account=account)
    snap = stack.wait_status(txn, {"succeeded", "failed", "rejected"}, timeout=60)
    assert snap["status"] == "succeeded", snap
    return snap


def test_one_worker_opens_the_breaker_for_all_and_one_probe_closes_it(
    stack: Stack, tmp_path: Path
) -> None:
    dev = GatewayWorker(stack.process, stack.env_port("PAYSTREAM_WORKER_WEB_PORT"), tmp_path)
    with extra_gateway_worker(stack, tmp_path) as second:
        second.wait_assigned()
        dev.wait_assigned()
        pair = [dev, second]

        # The provider goes down: deposits one at a time over many accounts (so over both
        # workers' partitions), each after both views agree on the breaker.
        stack.faults(PROVIDER, down=True)
        before = _calls(stack)
        for n in range(4 * FAIL_MAX):
            shared = wait_for(lambda: _agreed(pair), timeout=10, what="views agreeing")
            if shared["state"] == "open":
                break
            _deposit_succeeds(stack, f"down-{n}")  # on stripe, after jsonpay refused
        else:
            raise AssertionError(f"the breaker did not open: {_breaker(dev)}")
        opened_calls = _calls(stack) - before
        assert opened_calls <= FAIL_MAX, f"{opened_calls} calls opened it, fail_max {FAIL_MAX}"
        assert shared["failures"] >= FAIL_MAX
        open_until = float(shared["open_until"])

        # A worker started now reads the open breaker before it takes commands. While it
        # starts, neither first worker calls the gateway (both take deposits: see the
        # attempts metric below).
        with extra_gateway_worker(stack, tmp_path) as third, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: _deposit_succeeds(stack, f"open-{n}"), range(4)))
            assert _calls(stack) - before == opened_calls
            third.wait_assigned()
            trio = [dev, second, third]
            third_view = _breaker(third)
            assert third_view is not None
            assert third_view["state"] == "open"
            for worker in trio:
                status = worker.health()
                assert status is not None
                assert status["breaker_view"]["caught_up"] is True, status
                assert status["breaker_view"]["reader_errors"] == 0, status

            def third_refused() -> bool:
                _deposit_succeeds(stack, f"third-{uuid.uuid4().hex[:8]}")
                result = "not_executed_breaker_open"
                attempts = "paystream_worker_gateway_attempts_total"
                return _metric(third, attempts, gateway=GATEWAY, result=result) > 0

            wait_for(third_refused, timeout=30, interval=0, what="the third worker refusing")
            margin = open_until - time.time()
            assert margin > 0, "the third worker was tested after the open period"
            assert _calls(stack) - before == opened_calls, "the third worker called the gateway"

            # The open period ends with the provider back: concurrent deposits on every
            # worker, one probe (one lease granted in all), and the breaker closes for all.
            wait_for(lambda: time.time() > open_until, timeout=RESET_S + 5, what="open period")
            stack.faults(PROVIDER)
            with ThreadPoolExecutor(12) as probing:
                list(probing.map(lambda n: _deposit_succeeds(stack, f"probe-{n}"), range(12)))
            shared = wait_for(lambda: _agreed(trio), timeout=10, what="views agreeing")
            assert shared["state"] == "closed", shared
            probes = {
                result: sum(
                    _metric(w, "paystream_gateway_breaker_probes_total", result=result)
                    for w in trio
                )
                for result in ("granted", "succeeded", "failed")
            }
            assert probes == {"granted": 1, "succeeded": 1, "failed": 0}, probes
            for worker in trio:
                state = _metric(
                    worker, "paystream_gateway_breaker_state", gateway=GATEWAY, state="closed"
                )
                assert state == 1
            # Both first workers took part (their partitions got deposits for the gateway).
            for worker in pair:
                attempts = _metric(worker, "paystream_worker_gateway_attempts_total")
                assert attempts > 0
            _deposit_succeeds(stack, "after")
            assert _calls(stack) > before + opened_calls, "closed: the gateway is called again"
            for worker in (third, second):  # stopped together, not one after the other
                worker.process.terminate()
    print(
        f"\nshared breakers: opened after {opened_calls} calls (fail_max {FAIL_MAX}, 2 workers);"
        f" third worker done {margin:.1f} s before the open period ended"
    )
