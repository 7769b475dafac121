"""Each service's PostgreSQL sessions say which service they serve (application_name), and
`paystream bench e2e` files each backend's CPU under that name."""

from __future__ import annotations

import psycopg
import pytest

from paystream_cli.bench_pg_clients import SERVER, UNNAMED_TRIES, PgClients
from paystream_cli.common import name_database_sessions
from tests.support.databases import libpq

pytestmark = pytest.mark.integration


def _application_name(url: str) -> str:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert row is not None
    return str(row[0])


def test_a_service_names_its_sessions_after_itself(
    primary_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "recorded so that teardown restores its absence")
    monkeypatch.delenv("PGAPPNAME")
    name_database_sessions("gateway-worker")
    assert _application_name(primary_pg) == "paystream-gateway-worker"


def test_a_name_the_operator_chose_wins(primary_pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGAPPNAME", "payments-eu-gateway")
    name_database_sessions("gateway-worker")
    assert _application_name(primary_pg) == "payments-eu-gateway"


def test_the_bench_files_each_backend_under_its_session_name(
    primary_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "recorded so that teardown restores its absence")
    monkeypatch.delenv("PGAPPNAME")
    clients = PgClients(primary_pg)
    url = libpq(primary_pg)
    try:
        with (
            psycopg.connect(url, application_name="paystream-relay") as named,
            psycopg.connect(url) as unnamed,
        ):
            assert clients.name(named.info.backend_pid, 1.0) == "paystream-relay"
            # the start time is part of the key: a reused pid is asked again
            assert clients.name(named.info.backend_pid, 2.0) == "paystream-relay"
            names = [clients.name(unnamed.info.backend_pid, 1.0) for _ in range(UNNAMED_TRIES)]
            assert names == [SERVER] * UNNAMED_TRIES
        assert clients.name(2**22 + 7, 1.0) == SERVER  # no backend has that pid
    finally:
        clients.close()
