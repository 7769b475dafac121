"""Callbacks and reconciliation: parked (orphan) callbacks, anomalies, reconciler
bookkeeping, and the SECURITY DEFINER lookups that must cross tenants.

The callback ingress learns the tenant from the connection in the URL, before any tenant
is set; the callback worker's parked-callback sweep and the reconciler look for work across
tenants. Each does so through an owner-run function that returns only ids, so the app role
still reads no other tenant's rows.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
NEW_TENANT_TABLES = ("parked_callbacks", "anomalies", "reconciliations")
CURRENT_TENANT = "NULLIF(current_setting('paystream.tenant_id', true), '')::uuid"


def upgrade() -> None:
    op.create_table(
        "parked_callbacks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("connection_id", sa.UUID(), nullable=False),
        sa.Column("gateway_code", sa.String(length=64), nullable=False),
        sa.Column("provider_event_id", sa.String(length=255), nullable=False),
        sa.Column("provider_reference", sa.String(length=255), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("body_encoding", sa.String(length=8), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "parked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("tries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_try_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_parked_callbacks_connection_id_connections"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_parked_callbacks_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parked_callbacks")),
        sa.UniqueConstraint(
            "connection_id",
            "provider_event_id",
            name=op.f("uq_parked_callbacks_connection_id_provider_event_id"),
        ),
    )
    op.create_index(
        op.f("ix_parked_callbacks_resolved_at_next_try_at"),
        "parked_callbacks",
        ["resolved_at", "next_try_at"],
        unique=False,
    )
    op.create_table(
        "anomalies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("transaction_id", sa.UUID(), nullable=True),
        sa.Column("connection_id", sa.UUID(), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("provider_event_id", sa.String(length=255), nullable=True),
        sa.Column("transaction_status", sa.String(length=24), nullable=True),
        sa.Column("reported_status", sa.String(length=24), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_anomalies_connection_id_connections"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_anomalies_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_anomalies_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomalies")),
    )
    op.create_index(
        op.f("ix_anomalies_tenant_id_created_at"),
        "anomalies",
        ["tenant_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "reconciliations",
        sa.Column("transaction_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("lookups", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_lookup_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_lookup_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_result", sa.Text(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_reconciliations_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_reconciliations_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f("pk_reconciliations")),
    )
    for table in NEW_TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")

    op.execute(
        f"""
        CREATE FUNCTION paystream_connection_tenant(p_connection_id uuid, p_gateway_code text)
        RETURNS uuid
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT c.tenant_id FROM connections c JOIN tenants t ON t.id = c.tenant_id
          WHERE c.id = p_connection_id AND c.gateway_code = p_gateway_code AND t.active
        $$;
        REVOKE ALL ON FUNCTION paystream_connection_tenant(uuid, text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_connection_tenant(uuid, text) TO {APP_ROLE};

        CREATE FUNCTION paystream_parked_callbacks_due(p_limit integer)
        RETURNS TABLE (tenant_id uuid, parked_id bigint)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT p.tenant_id, p.id FROM parked_callbacks p
          WHERE p.resolved_at IS NULL AND p.next_try_at <= now()
          ORDER BY p.next_try_at LIMIT p_limit
        $$;
        REVOKE ALL ON FUNCTION paystream_parked_callbacks_due(integer) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_parked_callbacks_due(integer) TO {APP_ROLE};

        CREATE FUNCTION paystream_reconcile_due(
          p_pending_age_s double precision, p_action_expiry_s double precision, p_limit integer)
        RETURNS TABLE (tenant_id uuid, transaction_id uuid)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT t.tenant_id, t.id FROM transactions t
          LEFT JOIN reconciliations r ON r.transaction_id = t.id
          WHERE (
              (t.status IN ('pending', 'unknown')
               AND t.updated_at <= now() - make_interval(secs => p_pending_age_s))
              OR (t.status = 'action_required'
               AND t.updated_at <= now() - make_interval(secs => p_action_expiry_s))
            )
            AND (r.next_lookup_at IS NULL OR r.next_lookup_at <= now())
          ORDER BY coalesce(r.next_lookup_at, t.updated_at) LIMIT p_limit
        $$;
        REVOKE ALL ON FUNCTION paystream_reconcile_due(double precision, double precision, integer)
          FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION
          paystream_reconcile_due(double precision, double precision, integer) TO {APP_ROLE};

        CREATE FUNCTION paystream_unresolved_count(p_horizon_s double precision) RETURNS bigint
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT count(*) FROM transactions t
          WHERE t.status IN ('pending', 'unknown')
            AND t.created_at <= now() - make_interval(secs => p_horizon_s)
        $$;
        REVOKE ALL ON FUNCTION paystream_unresolved_count(double precision) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_unresolved_count(double precision) TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_unresolved_count(double precision)")
    op.execute(
        "DROP FUNCTION IF EXISTS paystream_reconcile_due(double precision, double precision, integer)"
    )
    op.execute("DROP FUNCTION IF EXISTS paystream_parked_callbacks_due(integer)")
    op.execute("DROP FUNCTION IF EXISTS paystream_connection_tenant(uuid, text)")
    for table in NEW_TENANT_TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
    op.drop_table("reconciliations")
    op.drop_index(op.f("ix_anomalies_tenant_id_created_at"), table_name="anomalies")
    op.drop_table("anomalies")
    op.drop_index(
        op.f("ix_parked_callbacks_resolved_at_next_try_at"), table_name="parked_callbacks"
    )
    op.drop_table("parked_callbacks")
