"""Circuit breakers and retries around one gateway call.

pybreaker cannot decorate `async def`; `with breaker.calling(): await call()` counts what
the block raises. Only gateway *health* failures trip it: a decline is a healthy answer.
`Breakers` keeps them in this process; `paystream_gateways.shared_breakers` shares them
with every worker, with an admission step (the half-open probe lease) before pybreaker.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import pybreaker
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from paystream_gateways.errors import Ambiguous, AmbiguousReason, NotExecuted, NotExecutedReason

T = TypeVar("T")


class Breakers:
    """One breaker per gateway, shared by every command in this process."""

    def __init__(self, fail_max: int, reset_timeout_s: float) -> None:
        self._fail_max = fail_max
        self._reset = reset_timeout_s
        self._by_gateway: dict[str, pybreaker.CircuitBreaker] = {}

    def of(self, gateway: str) -> pybreaker.CircuitBreaker:
        breaker = self._by_gateway.get(gateway)
        if breaker is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=self._fail_max, reset_timeout=self._reset, name=gateway
            )
            self._by_gateway[gateway] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        return {name: str(b.current_state) for name, b in self._by_gateway.items()}

    def view(self) -> dict[str, dict[str, Any]]:
        """What /healthz shows: each breaker's state, as this process knows it."""
        return {name: {"state": state} for name, state in self.states().items()}


class AdmittingBreaker(pybreaker.CircuitBreaker):
    """A breaker that admits a call itself before pybreaker runs it (the shared breakers'
    probe lease). Refusing raises pybreaker.CircuitBreakerError before anything is sent."""

    def admitted(self) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def note_failure(self, exc: BaseException) -> None:
        """Told what a failing call raised, just before pybreaker counts it."""


class _Backoff(wait_base):
    """Exponential with full jitter, but never shorter than a Retry-After we were given."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap

    def __call__(self, retry_state: object) -> float:
        attempt = getattr(retry_state, "attempt_number", 1)
        delay = random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
        outcome = getattr(retry_state, "outcome", None)
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int | float):
            delay = max(delay, min(float(retry_after), self.cap))
        return delay


async def call_with_resilience(
    breaker: pybreaker.CircuitBreaker,
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_s: float,
    max_s: float,
    gateway: str,
) -> T:
    """Retry ambiguous failures (same request, same key); NotExecuted and results pass
    through. An open breaker becomes NotExecuted(BREAKER_OPEN): nothing was sent.

    A retry refused before it ran (breaker open, connection refused) after an earlier try
    was ambiguous proves nothing about that earlier try: the answer stays Ambiguous, so the
    caller looks the key up instead of falling back to another gateway."""
    earlier: Ambiguous | None = None
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_Backoff(base_s, max_s),
        retry=retry_if_exception_type(Ambiguous),
        reraise=True,
    ):
        with attempt:
            try:
                return await _try_once(breaker, call, gateway)
            except Ambiguous as exc:
                earlier = exc
                raise
            except NotExecuted as exc:
                if earlier is None:
                    raise
                raise Ambiguous(
                    gateway,
                    earlier.reason,
                    f"{earlier.message}; the retry was not executed ({exc.reason})",
                ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def _try_once(
    breaker: pybreaker.CircuitBreaker, call: Callable[[], Awaitable[T]], gateway: str
) -> T:
    sent = False
    admission: AbstractAsyncContextManager[None] = (
        breaker.admitted() if isinstance(breaker, AdmittingBreaker) else contextlib.nullcontext()
    )
    try:
        async with admission:
            with breaker.calling():
                sent = True
                try:
                    return await call()
                except BaseException as exc:
                    if isinstance(breaker, AdmittingBreaker):
                        breaker.note_failure(exc)
                    raise
    except pybreaker.CircuitBreakerError as exc:
        if sent:
            # pybreaker trips *on* a failing call and raises its own error instead of the
            # call's: that call may have executed, so keep its real error.
            original = exc.__context__
            if isinstance(original, Ambiguous | NotExecuted):
                raise original from None
            raise Ambiguous(gateway, AmbiguousReason.SERVER_ERROR, str(exc)) from exc
        raise NotExecuted(gateway, NotExecutedReason.BREAKER_OPEN, "circuit breaker open") from exc
