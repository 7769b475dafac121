"""Restart dead children with exponential backoff, as an orchestrator would, never giving up.

Each watched unit is polled on :meth:`Supervisor.step`. A unit that died is restarted after
a delay that starts at ``initial`` and doubles for each death in a row up to ``maximum``;
a unit that stayed up ``stable_after`` seconds starts again from ``initial``. A failed
restart (the unit did not come up) is retried on the same schedule. Every death and
restart is logged; a unit dying again and again also gets the tail of its log.

There is no "give up": in a dev stack the usual reason for a crash loop is a dependency
being down (the database restarting), and tearing the whole stack down for it (including
an in-memory broker and everything in flight) turns a short outage into lost work. A unit
that can never recover keeps being retried every ``maximum`` seconds, loudly, until the
developer stops the stack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RestartBackoff", "Supervised", "Supervisor"]

_log = logging.getLogger(__name__)

# From this many deaths in a row on, the log tail goes with the warning.
_CRASH_LOOP_AFTER = 3


class Supervised(Protocol):
    """Something the supervisor keeps running."""

    @property
    def name(self) -> str: ...

    def poll(self) -> int | None:
        """Exit status once it died (reaping it), None while it runs."""

    def restart(self) -> str:
        """Start it again; returns a note for the log. Raises if it did not come up."""

    def log_tail(self, lines: int) -> str:
        """The last lines of its log, for crash-loop reports."""


@dataclass(frozen=True)
class RestartBackoff:
    initial: float = 1.0
    maximum: float = 30.0
    # Up this long, a unit's next death counts as the first again.
    stable_after: float = 60.0

    def delay(self, deaths_in_a_row: int) -> float:
        """Wait before restart number ``deaths_in_a_row`` (1 for the first)."""
        return float(min(self.maximum, self.initial * 2 ** max(0, deaths_in_a_row - 1)))


@dataclass
class _Watch:
    unit: Supervised
    started_at: float
    deaths_in_a_row: int = 0
    restart_at: float | None = None
    exit_code: int | None = None


class Supervisor:
    def __init__(
        self,
        backoff: RestartBackoff | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = _log,
    ) -> None:
        self.backoff = backoff or RestartBackoff()
        self._clock = clock
        self._log = log
        self._watches: list[_Watch] = []

    def watch(self, unit: Supervised) -> None:
        """Supervise ``unit`` (already started) from now on; units restart in watch order."""
        self._watches.append(_Watch(unit, self._clock()))

    def restarting(self) -> list[str]:
        """Names of the units that are down and waiting for their restart."""
        return [w.unit.name for w in self._watches if w.restart_at is not None]

    def step(self) -> None:
        """Notice deaths and run the restarts that are due."""
        for watch in self._watches:
            if watch.restart_at is None:
                self._check(watch)
            if watch.restart_at is not None and self._clock() >= watch.restart_at:
                self._restart(watch)

    def _check(self, watch: _Watch) -> None:
        code = watch.unit.poll()
        if code is None:
            return
        now = self._clock()
        uptime = now - watch.started_at
        if uptime >= self.backoff.stable_after:
            watch.deaths_in_a_row = 0
        watch.deaths_in_a_row += 1
        watch.exit_code = code
        delay = self.backoff.delay(watch.deaths_in_a_row)
        watch.restart_at = now + delay
        name = watch.unit.name
        if watch.deaths_in_a_row >= _CRASH_LOOP_AFTER:
            self._log.warning(
                "%s exited with %s after %.1fs up (%d deaths in a row); restarting in %gs\n"
                "--- last lines of its log ---\n%s",
                name,
                code,
                uptime,
                watch.deaths_in_a_row,
                delay,
                watch.unit.log_tail(15),
            )
        else:
            self._log.warning(
                "%s exited with %s after %.1fs up; restarting in %gs", name, code, uptime, delay
            )

    def _restart(self, watch: _Watch) -> None:
        name = watch.unit.name
        self._log.info("restarting %s now (restart %d in a row)", name, watch.deaths_in_a_row)
        try:
            note = watch.unit.restart()
        except Exception as exc:  # the unit did not come up: try again later
            watch.deaths_in_a_row += 1
            delay = self.backoff.delay(watch.deaths_in_a_row)
            watch.restart_at = self._clock() + delay
            self._log.error("%s did not restart: %s; next try in %gs", name, exc, delay)
            return
        watch.restart_at = None
        watch.started_at = self._clock()
        self._log.warning(
            "%s exited with %s; restarted%s", name, watch.exit_code, f" ({note})" if note else ""
        )
