"""Routing changes made with `paystream routes`, with who and when.

One row per command that changed the routing: the actor (an operator name, not a database
role: the CLI runs as the owner for everyone), the time, the action, what it applied to and
the routing before and after it as JSON. The row is written in the same transaction as the
change, so the log holds exactly the changes that were committed.

The table is not configuration: workers never read it, so it has no `config_changed`
trigger (the change itself, on gateway_countries or gateways, already moves
config_version). It is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE, so a
mistaken statement cannot rewrite history (dropping the table, as the downgrade does, still
works).

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("transaction_type", sa.String(length=16), nullable=True),
        sa.Column("gateway_code", sa.String(length=64), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(
            "action IN ('set', 'disable', 'enable', 'limits')",
            name=op.f("ck_routing_changes_action"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_changes")),
    )
    op.create_index(
        op.f("ix_routing_changes_changed_at"), "routing_changes", ["changed_at"], unique=False
    )
    op.execute(
        """
        CREATE FUNCTION paystream_routing_changes_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'routing_changes is append-only (% refused)', TG_OP;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON routing_changes"
        " FOR EACH ROW EXECUTE FUNCTION paystream_routing_changes_append_only()"
    )
    op.execute(
        "CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON routing_changes"
        " FOR EACH STATEMENT EXECUTE FUNCTION paystream_routing_changes_append_only()"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_routing_changes_changed_at"), table_name="routing_changes")
    op.drop_table("routing_changes")
    op.execute("DROP FUNCTION IF EXISTS paystream_routing_changes_append_only()")
