"""Idempotency keys reserved by the ingest API before it publishes a command.

One statement per request (`paystream_reserve_idempotency_key`) binds a tenant's key to the
first body it was sent with, whatever the timing: the same body gets the same transaction
id (the command is republished, harmlessly), another body gets 409, even while the first
command has not reached the worker yet. Commands produced straight to Kafka do not pass
here; the worker keeps its own check (the first offset wins).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
CURRENT_TENANT = "NULLIF(current_setting('paystream.tenant_id', true), '')::uuid"


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_idempotency_keys_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.execute("ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON idempotency_keys "
        f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
    )
    op.execute(f"GRANT SELECT, INSERT ON idempotency_keys TO {APP_ROLE}")
    # SECURITY DEFINER so the ingest needs no tenant scope (and so no transaction of its
    # own) for this one statement; it reads and writes only the tenant it is given, which
    # the ingest took from the caller's API key.
    op.execute(
        f"""
        CREATE FUNCTION paystream_reserve_idempotency_key(
          p_tenant uuid, p_key text, p_hash text, p_transaction uuid)
        RETURNS TABLE (reserved boolean, stored_hash text, status text, version integer)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        BEGIN
          -- A transaction the worker stored from a command produced straight to Kafka
          -- binds the key too.
          SELECT t.payload_hash, t.status, t.version INTO stored_hash, status, version
            FROM transactions t WHERE t.id = p_transaction AND t.tenant_id = p_tenant;
          INSERT INTO idempotency_keys (tenant_id, key, payload_hash, transaction_id)
            VALUES (p_tenant, p_key, coalesce(stored_hash, p_hash), p_transaction)
            ON CONFLICT DO NOTHING;
          reserved := FOUND;
          IF NOT reserved THEN
            -- A new statement: it sees a reservation that a concurrent request committed.
            SELECT k.payload_hash INTO stored_hash FROM idempotency_keys k
              WHERE k.tenant_id = p_tenant AND k.key = p_key;
          END IF;
          stored_hash := coalesce(stored_hash, p_hash);
          RETURN NEXT;
        END $$;
        REVOKE ALL ON FUNCTION paystream_reserve_idempotency_key(uuid, text, text, uuid)
          FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_reserve_idempotency_key(uuid, text, text, uuid)
          TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_reserve_idempotency_key(uuid, text, text, uuid)")
    op.drop_table("idempotency_keys")
