"""Application role, row-level security, API key lookup, outbox shards and notifications.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
TENANT_TABLES = (
    "tenants",
    "api_keys",
    "accounts",
    "connections",
    "transactions",
    "attempts",
    "ledger_entries",
    "balances",
    "outbox",
    "inbox",
    "callback_log",
)
CONFIG_TABLES = ("countries", "gateways", "gateway_countries")
# An unset or reset custom GUC reads as '' (not NULL) on a pooled connection: NULLIF makes
# both mean "no tenant", which matches no row.
CURRENT_TENANT = "NULLIF(current_setting('paystream.tenant_id', true), '')::uuid"
SHARDS = 16


def upgrade() -> None:
    # Roles are cluster-wide: create once, never fail when another database made it.
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
          END IF;
        END $$;
        """
    )
    # The migrating (owner) role switches to the app role per transaction: it must be a member.
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    for table in TENANT_TABLES:
        column = "id" if table == "tenants" else "tenant_id"
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({column} = {CURRENT_TENANT}) WITH CHECK ({column} = {CURRENT_TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(CONFIG_TABLES)} TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON outbox_shards TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")

    # Authentication happens before the tenant is known: this owner-run function is the
    # only way the app role can read api_keys across tenants, and it returns just the id.
    op.execute(
        f"""
        CREATE FUNCTION paystream_tenant_for_key_hash(p_key_hash text) RETURNS uuid
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT k.tenant_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
          WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND t.active
        $$;
        REVOKE ALL ON FUNCTION paystream_tenant_for_key_hash(text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_tenant_for_key_hash(text) TO {APP_ROLE};
        """
    )

    op.execute(f"INSERT INTO outbox_shards (shard) SELECT generate_series(0, {SHARDS - 1})")
    # One notification per inserting statement (NOTIFY also folds duplicates per commit):
    # relays wake as soon as the writing transaction commits.
    op.execute(
        """
        CREATE FUNCTION paystream_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('paystream_outbox', '');
          RETURN NULL;
        END $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
          FOR EACH STATEMENT EXECUTE FUNCTION paystream_outbox_notify();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS paystream_outbox_notify()")
    op.execute("DELETE FROM outbox_shards")
    op.execute("DROP FUNCTION IF EXISTS paystream_tenant_for_key_hash(text)")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON outbox_shards FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON {', '.join(CONFIG_TABLES)} FROM {APP_ROLE}")
    for table in TENANT_TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    # The role itself stays: other databases in the cluster may still use it.
