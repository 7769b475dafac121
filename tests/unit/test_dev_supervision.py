"""The dev supervisor's restart policy: backoff doubling to a cap, reset after a stable
run, failed restarts retried, never giving up; on a fake clock with fake units."""

from __future__ import annotations

import logging

import pytest

from paystream_devinfra import RestartBackoff, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeUnit:
    """Dies when told; restarts succeed unless `failing_restarts` says otherwise."""

    def __init__(self, name: str = "relay") -> None:
        self.name = name
        self.exit_code: int | None = None
        self.restarts = 0
        self.failing_restarts = 0

    def poll(self) -> int | None:
        return self.exit_code

    def restart(self) -> str:
        if self.failing_restarts:
            self.failing_restarts -= 1
            raise RuntimeError("connection refused")
        self.restarts += 1
        self.exit_code = None
        return f"attempt {self.restarts}"

    def log_tail(self, lines: int) -> str:
        return "Traceback: database is down"


def _restart_delays(
    supervisor: Supervisor, unit: FakeUnit, clock: FakeClock, deaths: int
) -> list[float]:
    """Kill `unit` `deaths` times right after each restart; the delay before each restart."""
    delays: list[float] = []
    for _ in range(deaths):
        unit.exit_code = 1
        supervisor.step()
        died_at, before = clock.now, unit.restarts
        while unit.restarts == before:
            clock.now += 0.5
            supervisor.step()
        delays.append(clock.now - died_at)
    return delays


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    backoff = RestartBackoff()
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_crash_loop_backs_off_and_never_gives_up() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock)
    unit = FakeUnit()
    supervisor.watch(unit)
    # Twelve deaths within a few minutes (the old policy stopped the stack after five).
    delays = _restart_delays(supervisor, unit, clock, deaths=12)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
    assert unit.restarts == 12


def test_staying_up_resets_the_backoff() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock)
    unit = FakeUnit()
    supervisor.watch(unit)
    assert _restart_delays(supervisor, unit, clock, deaths=4) == [1, 2, 4, 8]
    clock.now += 61  # up for more than a minute
    supervisor.step()
    assert _restart_delays(supervisor, unit, clock, deaths=2) == [1, 2]


def test_failed_restart_is_retried_with_growing_delay(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock)
    unit = FakeUnit("postgresql")
    unit.failing_restarts = 2
    supervisor.watch(unit)
    unit.exit_code = -9
    with caplog.at_level(logging.INFO):
        supervisor.step()
        assert supervisor.restarting() == ["postgresql"]
        died_at = clock.now
        while unit.restarts == 0:
            clock.now += 0.5
            supervisor.step()
    assert clock.now - died_at == 1 + 2 + 4  # first try, then two retries
    assert supervisor.restarting() == []
    messages = [r.getMessage() for r in caplog.records]
    assert "postgresql exited with -9 after 0.0s up; restarting in 1s" in messages
    assert sum("did not restart: connection refused" in m for m in messages) == 2
    assert "postgresql exited with -9; restarted (attempt 1)" in messages


def test_units_restart_in_watch_order_and_independently() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock)
    pg, relay, api = FakeUnit("postgresql"), FakeUnit("relay"), FakeUnit("ingest-api")
    for unit in (pg, relay, api):
        supervisor.watch(unit)
    pg.exit_code = relay.exit_code = -9
    supervisor.step()
    assert supervisor.restarting() == ["postgresql", "relay"]
    clock.now += 1
    supervisor.step()
    assert (pg.restarts, relay.restarts, api.restarts) == (1, 1, 0)


def test_crash_loop_warning_carries_the_log_tail(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock)
    unit = FakeUnit()
    supervisor.watch(unit)
    with caplog.at_level(logging.WARNING):
        _restart_delays(supervisor, unit, clock, deaths=3)
    tails = [r.getMessage() for r in caplog.records if "database is down" in r.getMessage()]
    assert len(tails) == 1  # the third death in a row
    assert "3 deaths in a row" in tails[0]
