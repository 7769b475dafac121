"""What waits, and for how long: the reconciler's backlog gauges.

Alerts need the age of the oldest `pending`/`unknown` transaction per gateway and of the
oldest outbox row the relay has not published. The reconciler exports them, as the app role,
which sees one tenant's rows only: like `paystream_unresolved_count`, these SECURITY DEFINER
functions return aggregates and no row of any tenant.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"


def upgrade() -> None:
    # transactions (status, updated_at) narrows to the two statuses, the same rows the
    # reconciler's paystream_reconcile_due reads every round; the outbox's partial index
    # (published_at IS NULL) holds only what the relay has still to publish.
    op.execute(
        f"""
        CREATE FUNCTION paystream_waiting_transactions()
        RETURNS TABLE (gateway text, status text, transactions bigint,
                       oldest_age_s double precision)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT coalesce(t.gateway_code, ''), t.status, count(*),
            extract(epoch FROM now() - min(t.created_at))::double precision
          FROM transactions t
          WHERE t.status IN ('pending', 'unknown')
          GROUP BY 1, 2
        $$;
        REVOKE ALL ON FUNCTION paystream_waiting_transactions() FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_waiting_transactions() TO {APP_ROLE};

        CREATE FUNCTION paystream_outbox_backlog()
        RETURNS TABLE (unpublished bigint, oldest_age_s double precision)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT count(*),
            coalesce(extract(epoch FROM now() - min(o.created_at)), 0)::double precision
          FROM outbox o WHERE o.published_at IS NULL
        $$;
        REVOKE ALL ON FUNCTION paystream_outbox_backlog() FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_outbox_backlog() TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_outbox_backlog()")
    op.execute("DROP FUNCTION IF EXISTS paystream_waiting_transactions()")
