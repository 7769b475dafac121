"""Migrations apply, downgrade and re-apply on every PostgreSQL target, and the models match."""

from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from paystream_storage import migrate
from paystream_storage.models import Base
from tests.support.databases import fresh_database, libpq

pytestmark = pytest.mark.integration


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(pg_server: str) -> None:
    with fresh_database(pg_server, migrated=False) as url:
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= _tables(url)
        migrate.downgrade(url, "base")
        assert _tables(url) <= {"alembic_version"}
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= _tables(url)


def test_models_match_migrations(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_balances_cannot_go_negative(database_url: str) -> None:
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 't')")
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
        conn.execute(
            "INSERT INTO accounts (tenant_id, id, country) SELECT id, 'a1', 'DE' FROM tenants"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO balances (tenant_id, account_id, currency, available_minor)"
                " SELECT id, 'a1', 'EUR', -1 FROM tenants"
            )
