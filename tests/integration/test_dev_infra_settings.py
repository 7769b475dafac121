"""The embedded PostgreSQL of `paystream dev` and the benches: settings it runs with."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psycopg
import pytest

from paystream_cli.infra import open_infra

pytestmark = pytest.mark.integration


def test_the_embedded_database_looks_for_tables_to_analyze_every_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Statements prepared on an embedded database's first, empty tables must be replanned
    # within seconds as the tables fill (see EMBEDDED_SETTINGS), not after a minute.
    monkeypatch.delenv("PAYSTREAM_DATABASE_URL", raising=False)
    monkeypatch.setenv("PAYSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker started
    with contextlib.ExitStack() as stack:
        infra = open_infra(stack, tmp_path, fsync=False)
        assert infra.postgres is not None
        with psycopg.connect(infra.postgres.dsn) as conn:
            row = conn.execute("SHOW autovacuum_naptime").fetchone()
            assert row == ("1s",)
            assert conn.execute("SHOW autovacuum").fetchone() == ("on",)
