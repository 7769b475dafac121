"""`paystream_rows`: a set of rows sent as one JSON array, with a row estimate the planner
can use.

The hot path sends each set of rows as one JSON document (`paystream_storage.statements`).
Read with `jsonb_array_elements`, the planner assumes 100 rows (a built-in's fixed
estimate, whatever the document holds) and joined them to `transactions`, `attempts` or
`balances` by hashing a sequential scan of the whole table: a cost growing with the table,
in every unit. This function returns the same elements but tells the planner to expect 10,
so the joins stay index lookups. `SET search_path` keeps it from being inlined (an inlined
function would be `jsonb_array_elements` again, estimate included).

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION paystream_rows(p_rows jsonb) RETURNS SETOF jsonb
        LANGUAGE sql IMMUTABLE PARALLEL SAFE ROWS 10
        SET search_path = pg_catalog AS $$
          SELECT jsonb_array_elements(p_rows)
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_rows(jsonb)")
