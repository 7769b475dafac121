"""Circuit breakers whose state every worker shares (through a health channel: in the
worker, the `<prefix>.gateway-health` topic of `paystream_messaging.gateway_health_topic`).

pybreaker stays the breaker: `ViewStorage` is its storage, reading the state, the failure
count and the open time from the shared view and publishing what pybreaker writes. One
thing pybreaker cannot do across processes is let a single call through when the open
period is over (its half-open state lets every concurrent call through), so admission
comes first (`SharedBreaker.admitted`, entered by `resilience._try_once` before pybreaker):
a worker claims the probe lease on the channel and only the worker granted it, and in it
only one call, probes. Everything refused there is refused before anything is sent, so it
is NotExecuted(BREAKER_OPEN) and the fallback to the next gateway stays safe.

Only the lease holder moves a breaker that is not closed: a call admitted while closed that
fails after the breaker opened (a hanging gateway's read timeout is longer than the open
period) neither reopens nor extends it, and pybreaker's own open-period check reads the
same clock as admission, so the two never disagree into an open -> half-open -> open loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import pybreaker

from paystream_gateways.resilience import AdmittingBreaker, Breakers

# pybreaker names the state "half-open"; the health records say "half_open".
_PYBREAKER_STATE = {"closed": pybreaker.STATE_CLOSED, "open": pybreaker.STATE_OPEN}


class LeaseLike(Protocol):
    @property
    def holder(self) -> str: ...

    @property
    def until(self) -> float: ...


class HealthEntry(Protocol):
    """One gateway's shared state (`paystream_messaging.gateway_health.HealthRecord`)."""

    @property
    def state(self) -> str: ...

    @property
    def failures(self) -> int: ...

    @property
    def open_until(self) -> float | None: ...

    @property
    def lease(self) -> LeaseLike | None: ...

    def lease_held(self, now: float) -> LeaseLike | None: ...


class HealthChannel(Protocol):
    """The shared view and the changes a breaker publishes to it
    (`paystream_messaging.gateway_health_topic.LiveView`). Publishing never waits; the
    change is in this process's view at once."""

    @property
    def worker_id(self) -> str: ...

    def entry(self, gateway: str) -> HealthEntry | None: ...

    def snapshot(self) -> dict[str, dict[str, Any]]: ...

    def failed(self, gateway: str, *, failures: int, reason: str) -> None: ...

    def reset(self, gateway: str, *, reason: str) -> None: ...

    def opened(
        self, gateway: str, *, failures: int, opened_at: float, open_until: float, reason: str
    ) -> None: ...

    def closed(self, gateway: str, *, reason: str) -> None: ...

    async def claim(
        self, gateway: str, *, until: float, timeout_s: float
    ) -> Literal["granted", "denied", "timeout"]: ...


# (gateway, result): granted | denied | timeout | succeeded | failed
OnProbe = Callable[[str, str], None]


class ViewStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage, bound to one gateway's entry of the shared view."""

    def __init__(
        self,
        gateway: str,
        channel: HealthChannel,
        reset_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("gateway-health")
        self._gateway = gateway
        self._channel = channel
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._successes = 0  # half-open successes: local, pybreaker closes after the first
        self.last_error = ""  # what the failing call raised, for the record's reason

    def _entry(self) -> HealthEntry | None:
        return self._channel.entry(self._gateway)

    def _may_move(self, entry: HealthEntry | None) -> bool:
        """Whether this worker's call may open or close the breaker: always while it is
        closed; otherwise only as the holder of the probe lease (even expired: nobody took
        it over). Anyone else's call was admitted while closed and ended late: the probe,
        not that call, says whether the gateway is back."""
        if entry is None or entry.state == "closed":
            return True
        return entry.lease is not None and entry.lease.holder == self._channel.worker_id

    @property
    def state(self) -> str:
        entry = self._entry()
        if entry is None:
            return pybreaker.STATE_CLOSED
        return _PYBREAKER_STATE.get(entry.state, pybreaker.STATE_HALF_OPEN)

    @state.setter
    def state(self, state: str) -> None:
        entry = self._entry()
        was = entry.state if entry is not None else "closed"
        if not self._may_move(entry):
            return
        if state == pybreaker.STATE_OPEN:
            opened = self._clock()
            failures = self.counter
            reason = (
                f"probe failed: {self.last_error}"
                if was == "half_open"
                else f"{failures} consecutive failures: {self.last_error}"
            )
            self._channel.opened(
                self._gateway,
                failures=failures,
                opened_at=opened,
                open_until=opened + self._reset_timeout_s,
                reason=reason,
            )
        elif state == pybreaker.STATE_CLOSED and was != "closed":
            self._channel.closed(self._gateway, reason="probe succeeded")
        # half-open: nothing to publish. Admission claimed the lease before pybreaker ran,
        # and the granted claim already made the shared state half_open.

    def increment_counter(self) -> None:
        entry = self._entry()
        if entry is not None and entry.state != "closed":
            return  # a failing probe: the open that follows carries the count
        failures = (entry.failures if entry is not None else 0) + 1
        reason = f"{failures} consecutive failures: {self.last_error}"
        self._channel.failed(self._gateway, failures=failures, reason=reason)

    def reset_counter(self) -> None:
        entry = self._entry()
        # Nothing to say when nothing changes: a success on a healthy gateway (the common
        # case, hundreds a second) must not become a record.
        if entry is not None and entry.state == "closed" and entry.failures > 0:
            self._channel.reset(self._gateway, reason="a call succeeded")

    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        entry = self._entry()
        return entry.failures if entry is not None else 0

    @property
    def success_counter(self) -> int:
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        # pybreaker checks opened_at + reset_timeout against its own datetime.now(): report
        # the shared open_until minus our timeout, shifted onto pybreaker's clock, so that
        # its check is "our clock < open_until" exactly as admission's (with time.time in
        # production the shift is nil; a test's clock moves both together).
        entry = self._entry()
        if entry is None or entry.open_until is None:
            return None
        shift = timedelta(seconds=entry.open_until - self._reset_timeout_s - self._clock())
        return datetime.now(UTC) + shift

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        """pybreaker sets it just before it writes the open state, which publishes the
        open with its time (our clock, the same one admission compares with)."""


class SharedBreaker(AdmittingBreaker):
    """A pybreaker breaker over the shared view, with the probe lease in front of it."""

    def __init__(
        self,
        gateway: str,
        channel: HealthChannel,
        *,
        fail_max: int,
        reset_timeout_s: float,
        lease_s: float,
        claim_wait_s: float,
        on_probe: OnProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway
        self._clock = clock
        self._channel = channel
        self._lease_s = lease_s
        self._claim_wait_s = claim_wait_s
        self._on_probe = on_probe or (lambda _gateway, _result: None)
        self._probing = False  # one call of this process probes at a time
        self._counted_lease: float | None = None  # `until` of the last lease counted granted
        self._view_storage = ViewStorage(gateway, channel, reset_timeout_s, clock)
        super().__init__(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            state_storage=self._view_storage,
            name=gateway,
        )

    # pybreaker re-syncs its cached state from the storage and, doing so, "enters" the new
    # state: entering closed resets the failure count. Seeing another worker's transition
    # is not ours to act on (it would wipe failures other workers counted since), so the
    # re-sync here enters quietly; pybreaker's own transitions (open/close) still notify.
    @property
    def state(self) -> Any:
        current = self.current_state
        if current != self._state.name:
            with self._lock:
                self._state = self._create_new_state(current, prev_state=self._state)
        return self._state

    @state.setter
    def state(self, state_str: str) -> None:
        with self._lock:
            self._state = self._create_new_state(state_str, prev_state=self._state, notify=True)

    def half_open(self) -> None:
        """pybreaker's open state calls this once its open period is over, then calls again
        expecting half-open. Only the shared view makes a breaker half-open (a granted
        claim): if it is not, refuse the call (nothing sent) rather than re-sync to open and
        go round open -> half-open -> open until the stack runs out."""
        if self.current_state != pybreaker.STATE_HALF_OPEN:
            raise pybreaker.CircuitBreakerError(
                "circuit breaker open: this worker holds no probe lease in the shared view"
            )
        super().half_open()

    def note_failure(self, exc: BaseException) -> None:
        """Remember what the failing call raised: the record that counts it says why."""
        self._view_storage.last_error = (str(exc) or type(exc).__name__)[:300]

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Enter to make one call; raises pybreaker.CircuitBreakerError (nothing sent) when
        the shared breaker refuses it.

        Closed: every call. Open: none until the open period is over; then the one call
        of the one worker that holds the probe lease (claimed here, granted by the log)."""
        entry = self._channel.entry(self._gateway)
        now = self._clock()
        if entry is None or entry.state == "closed":
            yield
            return
        if entry.open_until is not None and now < entry.open_until:
            raise pybreaker.CircuitBreakerError(
                f"circuit breaker open for {entry.open_until - now:.1f} s more"
            )
        if self._probing:
            raise pybreaker.CircuitBreakerError("circuit breaker half-open: a probe is under way")
        held = entry.lease_held(now)
        if held is not None and held.holder != self._channel.worker_id:
            raise pybreaker.CircuitBreakerError(
                f"circuit breaker half-open: {held.holder} holds the probe lease"
            )
        self._probing = True
        try:
            if held is not None and entry.state == "half_open":
                # Ours, granted after our claim stopped waiting for it: take it up.
                if self._counted_lease != held.until:
                    self._counted_lease = held.until
                    self._on_probe(self._gateway, "granted")
            else:
                # No lease, or ours from before the breaker opened again (a late open
                # landed after our grant): claim anew, the log decides.
                until = now + self._lease_s
                result = await self._channel.claim(
                    self._gateway, until=until, timeout_s=self._claim_wait_s
                )
                self._on_probe(self._gateway, result)
                if result != "granted":
                    raise pybreaker.CircuitBreakerError(
                        "circuit breaker half-open: the probe lease went to another worker"
                        if result == "denied"
                        else "circuit breaker half-open: the lease claim did not come back in time"
                    )
                self._counted_lease = until
            try:
                yield
            except pybreaker.CircuitBreakerError as exc:
                # Raised while handling the call's error: pybreaker tripping on the failed
                # probe. Raised on its own: refused before sending (the view changed).
                if exc.__context__ is not None:
                    self._on_probe(self._gateway, "failed")
                raise
            except BaseException:
                self._on_probe(self._gateway, "failed")
                raise
            self._on_probe(self._gateway, "succeeded")
        finally:
            self._probing = False


class SharedBreakers(Breakers):
    """One SharedBreaker per gateway, all over the same channel."""

    def __init__(
        self,
        channel: HealthChannel,
        fail_max: int,
        reset_timeout_s: float,
        *,
        lease_s: float,
        claim_wait_s: float = 2.0,
        on_probe: OnProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(fail_max, reset_timeout_s)
        self._clock = clock
        self._channel = channel
        self._lease_s = lease_s
        self._claim_wait_s = claim_wait_s
        self._on_probe = on_probe
        self._shared: dict[str, SharedBreaker] = {}

    def of(self, gateway: str) -> SharedBreaker:
        breaker = self._shared.get(gateway)
        if breaker is None:
            breaker = SharedBreaker(
                gateway,
                self._channel,
                fail_max=self._fail_max,
                reset_timeout_s=self._reset,
                lease_s=self._lease_s,
                claim_wait_s=self._claim_wait_s,
                on_probe=self._on_probe,
                clock=self._clock,
            )
            self._shared[gateway] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        return {name: str(b.current_state) for name, b in self._shared.items()}

    def view(self) -> dict[str, dict[str, Any]]:
        """Every gateway in the shared view (not only those this worker called)."""
        return self._channel.snapshot()
