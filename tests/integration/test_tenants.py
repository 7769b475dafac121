"""Tenants' API keys: shown once, stored hashed, revocable."""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from paystream_cli.main import cli
from paystream_storage.tenants import hash_api_key
from tests.support.databases import libpq

pytestmark = pytest.mark.integration


def test_create_prints_the_key_once_stores_a_hash_and_revocation_works(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYSTREAM_DATABASE_URL", database_url)
    runner = CliRunner()
    created = runner.invoke(cli, ["tenants", "create", "acme"])
    assert created.exit_code == 0, created.output
    api_key = next(
        line.split()[-1] for line in created.output.splitlines() if line.startswith("api_key")
    )
    with psycopg.connect(libpq(database_url)) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys").fetchall()
        assert stored == [(hash_api_key(api_key),)], "only the hash is stored"

        def tenant_for(key: str) -> object:
            row = conn.execute(
                "SELECT paystream_tenant_for_key_hash(%s)", (hash_api_key(key),)
            ).fetchone()
            return row[0] if row else None

        assert tenant_for(api_key) is not None
        again = runner.invoke(cli, ["tenants", "create", "acme"])
        assert again.exit_code != 0
        assert "already exists" in again.output

        revoked = runner.invoke(cli, ["tenants", "revoke-keys", "acme"])
        assert revoked.exit_code == 0, revoked.output
        assert "revoked 1 key" in revoked.output
        assert tenant_for(api_key) is None
