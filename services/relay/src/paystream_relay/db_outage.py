"""Telling a database outage from a bug, and pacing the reconnects while it lasts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg

log = logging.getLogger(__name__)

# PostgreSQL down, restarting or failing over, or our connection dropped: the outbox is
# still there when it returns, so the relay waits instead of exiting. (psycopg's own
# classes, as paystream_storage.errors would pull SQLAlchemy into the relay; deadlocks and
# serialization failures are OperationalErrors too, and a retry is right for them.)
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

FIRST_RETRY_S = 0.5
# Short cap: once the database is back, publishing resumes within a few seconds.
MAX_RETRY_S = 5.0


@dataclass
class DbOutage:
    """One warning when the database goes away, one line when it is back, capped backoff.

    A traceback per retry would bury the one line that matters in the log.
    """

    outages: int = 0
    since: float | None = None
    delay_s: float = FIRST_RETRY_S

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; returns how long to wait before the next one."""
        if self.since is None:
            self.since = time.monotonic()
            self.outages += 1
            log.warning(
                "outbox relay: database unavailable (%s: %s); reconnecting every %.1f-%.0f s"
                " until it is back",
                type(exc).__name__,
                " ".join(str(exc).split()) or "no detail",
                FIRST_RETRY_S,
                MAX_RETRY_S,
            )
        delay = self.delay_s
        self.delay_s = min(delay * 2, MAX_RETRY_S)
        return delay

    def over(self) -> None:
        """The database answered a whole batch again."""
        if self.since is not None:
            log.info(
                "outbox relay: database back after %.1f s; publishing resumes",
                time.monotonic() - self.since,
            )
        self.since = None
        self.delay_s = FIRST_RETRY_S
