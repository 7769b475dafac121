"""A retry refused before it ran says nothing about an earlier try that may have run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pybreaker
import pytest

from paystream_gateways.errors import (
    Ambiguous,
    AmbiguousReason,
    NotExecuted,
    NotExecutedReason,
)
from paystream_gateways.resilience import call_with_resilience


def _script(*answers: Exception | str) -> Callable[[], Awaitable[str]]:
    queue = list(answers)

    async def call() -> str:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return call


def _timeout() -> Ambiguous:
    return Ambiguous("gw", AmbiguousReason.TIMEOUT, "read timeout after sending")


def _refused() -> NotExecuted:
    return NotExecuted("gw", NotExecutedReason.CONNECT_FAILED, "connection refused")


async def _run(breaker: pybreaker.CircuitBreaker, call: Callable[[], Awaitable[str]]) -> str:
    return await call_with_resilience(
        breaker, call, attempts=3, base_s=0.0, max_s=0.0, gateway="gw"
    )


async def test_refused_after_a_timeout_stays_ambiguous() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=100)
    with pytest.raises(Ambiguous) as raised:
        await _run(breaker, _script(_timeout(), _refused(), _refused()))
    assert raised.value.reason == AmbiguousReason.TIMEOUT
    assert "not executed" in str(raised.value)


async def test_a_breaker_opened_by_the_timeout_does_not_make_it_not_executed() -> None:
    """The first try trips the breaker; the retry is refused by it without being sent."""
    breaker = pybreaker.CircuitBreaker(fail_max=1)
    with pytest.raises(Ambiguous):
        await _run(breaker, _script(_timeout(), "never reached"))


async def test_refused_from_the_start_is_not_executed() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=100)
    with pytest.raises(NotExecuted):
        await _run(breaker, _script(_refused()))
    open_breaker = pybreaker.CircuitBreaker(fail_max=1)
    open_breaker.open()
    with pytest.raises(NotExecuted) as raised:
        await _run(open_breaker, _script("never reached"))
    assert raised.value.reason == NotExecutedReason.BREAKER_OPEN


async def test_a_retry_that_answers_wins() -> None:
    assert await _run(pybreaker.CircuitBreaker(fail_max=100), _script(_timeout(), "ok")) == "ok"
