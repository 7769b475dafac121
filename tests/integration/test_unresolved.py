"""A transaction nothing moves any more (its command was dead-lettered mid-way) is
reported to an operator, not left in `processing` unseen."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from click.testing import CliRunner

from paystream_cli.main import cli
from tests.support.databases import libpq

pytestmark = pytest.mark.integration


def test_stuck_processing_is_reported(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant, stuck, busy = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant,))
        conn.execute(
            "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, 'a', 'DE')", (tenant,)
        )
        for txn, age in ((stuck, "2 hours"), (busy, "1 second")):
            conn.execute(
                "INSERT INTO transactions (id, tenant_id, account_id, type, status, amount_minor,"
                " currency, country, idempotency_key, payload_hash, updated_at) VALUES"
                " (%s, %s, 'a', 'deposit', 'processing', 100, 'EUR', 'DE', %s, 'h',"
                " now() - %s::interval)",
                (txn, tenant, str(txn), age),
            )
        [(count,)] = conn.execute("SELECT paystream_unresolved_count(86400, 600)").fetchall()
        assert count == 1
    monkeypatch.setenv("PAYSTREAM_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["transactions", "unresolved", "--stuck-after", "600"])
    assert result.exit_code == 1, result.output
    assert str(stuck) in result.output
    assert str(busy) not in result.output
