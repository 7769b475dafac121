"""The health window reads attempts alone, on an index built without blocking writes.

- `attempts.country`, `attempts.transaction_type`: copies of the transaction's (which never
  change), written with the attempt (`PgPaymentStore.add_attempts`). Joining transactions
  instead, as 0013's `paystream_route_health` did, made PostgreSQL hash the whole
  transactions table (a parallel seq scan: 0.6-0.9 s per call with 1M transactions,
  growing with the table) for ~60k window rows, every few seconds in every gateway worker;
  on attempts alone it is ~25 ms (EXPLAIN ANALYZE, ~50k final attempts in a 300 s
  window). NULL on older rows, which the window does not count: only in the first window
  after the upgrade (and for attempts a worker of the previous release records during a
  rolling upgrade) does health see fewer attempts than there were, which can only delay a
  demotion, never cause one. A fallback to the transaction's columns for NULL rows (even
  a COALESCE subquery that never runs) cost 4-7 times as much, on every call, forever.
- `ix_attempts_final_finished_at`: the window's final attempts, and nothing else. Built
  CONCURRENTLY: attempts is the hottest table, and a plain CREATE INDEX blocks every
  worker's writes for the whole build. So it runs outside the migration's transaction,
  before the transactional part, so that a failed run can simply be run again (an
  interrupted concurrent build leaves an INVALID index behind: it is dropped first). The
  plain `ix_attempts_finished_at` of the first 0013 (on databases upgraded while it was
  unreleased) is dropped the same way.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
HEALTH_INDEX = "ix_attempts_final_finished_at"
FIRST_INDEX = "ix_attempts_finished_at"

JOINED = """
  SELECT a.gateway_code::text, t.country::text, t.type::text, count(*),
    count(*) FILTER (WHERE a.status = 'succeeded')
  FROM attempts a JOIN transactions t ON t.id = a.transaction_id
  WHERE a.finished_at > now() - make_interval(secs => p_window_s)
    AND a.status IN ('succeeded', 'declined')
  GROUP BY 1, 2, 3
"""
ALONE = """
  SELECT a.gateway_code::text, a.country::text, a.transaction_type::text, count(*),
    count(*) FILTER (WHERE a.status = 'succeeded')
  FROM attempts a
  WHERE a.finished_at > now() - make_interval(secs => p_window_s)
    AND a.status IN ('succeeded', 'declined')
    AND a.country IS NOT NULL
  GROUP BY 1, 2, 3
"""


def _route_health(body: str) -> None:
    # Same signature and grants: CREATE OR REPLACE keeps them.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION paystream_route_health(p_window_s double precision)
        RETURNS TABLE (gateway_code text, country text, transaction_type text,
                       final bigint, succeeded bigint)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        {body}
        $$
        """
    )


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name in (FIRST_INDEX, HEALTH_INDEX):
            op.drop_index(name, table_name="attempts", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            HEALTH_INDEX,
            "attempts",
            ["finished_at"],
            postgresql_where=sa.text("status IN ('succeeded', 'declined')"),
            postgresql_concurrently=True,
        )
    # ALTER TABLE attempts waits for an exclusive lock, and every writer queues behind it
    # while it waits: give up (the deploy fails, to be run again) rather than stall them.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("attempts", sa.Column("country", sa.String(2), nullable=True))
    op.add_column("attempts", sa.Column("transaction_type", sa.String(16), nullable=True))
    _route_health(ALONE)


def downgrade() -> None:
    # Concurrently, like its build, and first, so that a failed downgrade runs again.
    with op.get_context().autocommit_block():
        op.drop_index(
            HEALTH_INDEX, table_name="attempts", postgresql_concurrently=True, if_exists=True
        )
    op.execute("SET LOCAL lock_timeout = '5s'")
    _route_health(JOINED)
    op.drop_column("attempts", "transaction_type")
    op.drop_column("attempts", "country")
