"""Which service a PostgreSQL backend serves, for `paystream bench e2e`'s CPU split.

PostgreSQL is one of the largest CPU lines of the bench, and a backend's process does not
say whose statements it runs. The services name their sessions `paystream-<process>`
(`paystream_cli.common.name_database_sessions`), so `pg_stat_activity` maps a backend's pid
to its service. Looked up only when a pid not seen before appears (pooled connections
live long), on one connection of the bench's own, which shows as `paystream-bench`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from paystream_config import DatabaseSettings

BENCH_APPLICATION_NAME = "paystream-bench"
# A process of the server itself (postmaster, WAL writer, ...) or a session that set no name.
SERVER = "server and unnamed sessions"
# A session is listed a moment before its name is (authentication, then the startup
# options): one listed without a name is asked again at this many samples before it counts
# as unnamed, rather than staying misfiled for the whole run.
UNNAMED_TRIES = 3


class PgClients:
    """`name(pid, started)`: the application_name of that backend, or SERVER. Never
    raises: a bench measures on, with everything under SERVER, when the database cannot
    be asked."""

    def __init__(self, database_url: str) -> None:
        self._url = DatabaseSettings(database_url=database_url).libpq_url
        self._named: dict[tuple[int, float], str] = {}  # (pid, start time): a pid reused
        self._listed: dict[int, str] = {}  # pid -> name, as last listed
        self._unnamed_tries: dict[tuple[int, float], int] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False

    def name(self, pid: int, started: float) -> str:
        key = (pid, started)
        if key in self._named:
            return self._named[key]
        if not self._listed.get(pid):
            self._refresh()
        name = self._listed.get(pid)
        if name is None or name or self._broken:
            # Not listed: one of the server's own processes (the postmaster).
            self._named[key] = name or SERVER
        else:
            tries = self._unnamed_tries[key] = self._unnamed_tries.get(key, 0) + 1
            if tries >= UNNAMED_TRIES:
                self._named[key] = SERVER
        return self._named.get(key, SERVER)

    def _refresh(self) -> None:
        if self._broken:
            return
        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    application_name=BENCH_APPLICATION_NAME,
                    connect_timeout=5,
                )
            rows = self._conn.execute("SELECT pid, application_name FROM pg_stat_activity")
            self._listed = {int(pid): str(name or "") for pid, name in rows.fetchall()}
        except psycopg.Error:
            self._broken = True
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
