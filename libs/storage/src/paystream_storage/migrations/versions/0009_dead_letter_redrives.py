"""What was redriven from the dead-letter topic (paystream dead-letters redrive).

One row per redrive, claimed before the record is sent and confirmed with where it landed
after Kafka acknowledged it, so a crash in between leaves a visible unconfirmed claim
rather than a silent second send. The partial unique index stops the same failed record
(original position and content) from being redriven twice unless the operator forces it
(`forced` rows are outside it) or the send failed (`failure` set). Owner role only: the
CLI writes it, no tenant-scoped service reads it.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_redrives",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("dead_letter_topic", sa.String(length=255), nullable=False),
        sa.Column("dead_letter_partition", sa.Integer(), nullable=False),
        sa.Column("dead_letter_offset", sa.BigInteger(), nullable=False),
        sa.Column("original_topic", sa.String(length=255), nullable=False),
        sa.Column("original_partition", sa.Integer(), nullable=False),
        sa.Column("original_offset", sa.BigInteger(), nullable=False),
        sa.Column("record_digest", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("redrive_count", sa.Integer(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("redriven_by", sa.String(length=255), nullable=False),
        sa.Column(
            "claimed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_partition", sa.Integer(), nullable=True),
        sa.Column("published_offset", sa.BigInteger(), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter_redrives")),
    )
    op.create_index(
        "ix_dead_letter_redrives_dead_letter",
        "dead_letter_redrives",
        ["dead_letter_topic", "dead_letter_partition", "dead_letter_offset"],
    )
    op.create_index(
        "uq_dead_letter_redrives_once",
        "dead_letter_redrives",
        ["original_topic", "original_partition", "original_offset", "record_digest"],
        unique=True,
        postgresql_where=sa.text("NOT forced AND failure IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("dead_letter_redrives")
