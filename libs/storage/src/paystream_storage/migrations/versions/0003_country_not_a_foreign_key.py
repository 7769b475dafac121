"""Accounts and transactions keep any ISO country, configured for routing or not.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("fk_accounts_country_countries", "accounts", type_="foreignkey")
    op.drop_constraint("fk_transactions_country_countries", "transactions", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "fk_accounts_country_countries", "accounts", "countries", ["country"], ["code"]
    )
    op.create_foreign_key(
        "fk_transactions_country_countries", "transactions", "countries", ["country"], ["code"]
    )
