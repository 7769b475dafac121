"""Each service's PostgreSQL sessions say which service they serve (application_name)."""

from __future__ import annotations

import psycopg
import pytest

from paystream_cli.common import name_database_sessions

pytestmark = pytest.mark.integration


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _application_name(url: str) -> str:
    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert row is not None
    return str(row[0])


def test_a_service_names_its_sessions_after_itself(
    primary_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAPPNAME", "recorded so that teardown restores its absence")
    monkeypatch.delenv("PGAPPNAME")
    assert _application_name(primary_pg) == ""
    name_database_sessions("gateway-worker")
    assert _application_name(primary_pg) == "paystream-gateway-worker"


def test_a_name_the_operator_chose_wins(primary_pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGAPPNAME", "payments-eu-gateway")
    name_database_sessions("gateway-worker")
    assert _application_name(primary_pg) == "payments-eu-gateway"
