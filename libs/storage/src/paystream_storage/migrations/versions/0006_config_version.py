"""A version number for the configuration processes cache (routes, gateways, connections,
tenants): every change to those tables bumps it, so a cache can tell it is stale with one
cheap read instead of reloading on every use.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
WATCHED = ("gateways", "gateway_countries", "connections", "tenants")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE config_version (
          id boolean PRIMARY KEY DEFAULT true CHECK (id),
          version bigint NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("INSERT INTO config_version DEFAULT VALUES")
    op.execute(f"GRANT SELECT ON config_version TO {APP_ROLE}")
    # SECURITY DEFINER: whoever changes the configuration (the owner in the CLI, or a role
    # that may not write config_version), the version moves with it, in the same transaction.
    op.execute(
        """
        CREATE FUNCTION paystream_config_changed() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        BEGIN
          UPDATE config_version SET version = version + 1;
          RETURN NULL;
        END $$;
        REVOKE ALL ON FUNCTION paystream_config_changed() FROM PUBLIC;
        """
    )
    for table in WATCHED:
        op.execute(
            f"CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
            f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION paystream_config_changed()"
        )


def downgrade() -> None:
    for table in WATCHED:
        op.execute(f"DROP TRIGGER IF EXISTS config_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS paystream_config_changed()")
    op.execute("DROP TABLE IF EXISTS config_version")
