"""Shared fixtures: the real broker and PostgreSQL servers the integration tests run on.

`PAYSTREAM_KAFKA_BOOTSTRAP` / `PAYSTREAM_DATABASE_URL` select existing servers; when unset,
the embedded tansu broker and embedded PostgreSQL are started once per test session.
Database tests also run against the machine's PostgreSQL at 127.0.0.1:5432 when it
answers (the CI machine's PostgreSQL 15).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import fresh_database, server_answers

LOCAL_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("PAYSTREAM_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    from paystream_devinfra import EmbeddedKafka

    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def primary_pg() -> Iterator[str]:
    """Server URL (owner role) of the configured or embedded PostgreSQL."""
    configured = os.environ.get("PAYSTREAM_DATABASE_URL")
    if configured:
        yield configured
        return
    from paystream_devinfra import EmbeddedPostgres

    # Not under pytest's tmp_path: as root the server runs as another user that needs o+x
    # on every parent, and pytest resets /tmp/pytest-of-root to 0700 on each run.
    base = Path(tempfile.mkdtemp(prefix="paystream-test-pg-"))
    try:
        with EmbeddedPostgres(base / "data", database="postgres", fsync=False) as pg:
            yield pg.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", params=["primary", "local-pg"])
def pg_server(request: pytest.FixtureRequest) -> str:
    """Each PostgreSQL target the DB tests must pass on."""
    if request.param == "primary":
        url: str = request.getfixturevalue("primary_pg")
        return url
    if os.environ.get("PAYSTREAM_DATABASE_URL", "").find("127.0.0.1:5432") >= 0:
        pytest.skip("the primary target already is 127.0.0.1:5432")
    if not server_answers(LOCAL_PG):
        pytest.skip("no PostgreSQL answering at 127.0.0.1:5432 (the CI machine's second target)")
    return LOCAL_PG


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh migrated database on each target, dropped after the test."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def primary_database_url(primary_pg: str) -> Iterator[str]:
    """A fresh migrated database on the primary target only (for broker-heavy tests)."""
    with fresh_database(primary_pg) as url:
        yield url
