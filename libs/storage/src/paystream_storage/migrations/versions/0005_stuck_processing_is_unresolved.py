"""A transaction stuck in `processing` counts as unresolved too.

A command whose handling kept failing goes to the dead-letter topic; if its transaction was
already stored, it would otherwise sit in `processing` unseen.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"


def upgrade() -> None:
    op.execute("DROP FUNCTION paystream_unresolved_count(double precision)")
    op.execute(
        f"""
        CREATE FUNCTION paystream_unresolved_count(
          p_horizon_s double precision, p_stuck_processing_s double precision) RETURNS bigint
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT count(*) FROM transactions t
          WHERE (t.status IN ('pending', 'unknown')
                 AND t.created_at <= now() - make_interval(secs => p_horizon_s))
             OR (t.status IN ('received', 'processing')
                 AND t.updated_at <= now() - make_interval(secs => p_stuck_processing_s))
        $$;
        REVOKE ALL ON FUNCTION paystream_unresolved_count(double precision, double precision)
          FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION
          paystream_unresolved_count(double precision, double precision) TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION paystream_unresolved_count(double precision, double precision)")
    op.execute(
        f"""
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
