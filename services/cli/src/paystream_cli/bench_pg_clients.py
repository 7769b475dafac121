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

BENCH_APPLICATION_NAME = "paystream-bench"
# A process of the server itself (postmaster, WAL writer, ...) or a session that set no name.
SERVER = "server and unnamed sessions"


class PgClients:
    """`name(pid, started)`: the application_name of that backend, or SERVER. Never
    raises: a bench measures on, with everything under SERVER, when the database cannot
    be asked."""

    def __init__(self, database_url: str) -> None:
        _, _, rest = database_url.partition("://")
        self._url = f"postgresql://{rest}"
        self._named: dict[tuple[int, float], str] = {}  # (pid, start time): a pid reused
        self._listed: dict[int, str] = {}  # pid -> name, as last listed
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False

    def name(self, pid: int, started: float) -> str:
        key = (pid, started)
        if key not in self._named:
            if pid not in self._listed:
                self._refresh()
            # A pid the server does not list is one of its own processes (the postmaster);
            # a session's name comes in its startup packet, so it is listed named at once.
            self._named[key] = self._listed.get(pid) or SERVER
        return self._named[key]

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
