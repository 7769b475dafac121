"""Transactions stuck in `processing` with a `started` attempt, for the reconciler.

The gateway worker commits an attempt as `started` before it calls the provider; if it dies
during the call and the command never comes back, nothing else moves the transaction. The
reconciler finds these across tenants (a SECURITY DEFINER function, like
`paystream_reconcile_due`: the app role sees one tenant's rows only) and looks the attempt
up at its provider. Only the newest attempt counts: an older one was finished before the
next was recorded.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"


def upgrade() -> None:
    # transactions (status, updated_at) narrows to `processing`; attempts' unique
    # (transaction_id, seq) finds the newest attempt of each.
    op.execute(
        f"""
        CREATE FUNCTION paystream_processing_due(p_age_s double precision, p_limit integer)
        RETURNS TABLE (tenant_id uuid, transaction_id uuid)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT t.tenant_id, t.id FROM transactions t
          CROSS JOIN LATERAL (
            SELECT a.status, a.started_at FROM attempts a
            WHERE a.transaction_id = t.id ORDER BY a.seq DESC LIMIT 1
          ) newest
          LEFT JOIN reconciliations r ON r.transaction_id = t.id
          WHERE t.status = 'processing'
            AND t.updated_at <= now() - make_interval(secs => p_age_s)
            AND newest.status = 'started'
            AND newest.started_at <= now() - make_interval(secs => p_age_s)
            AND (r.next_lookup_at IS NULL OR r.next_lookup_at <= now())
          ORDER BY coalesce(r.next_lookup_at, newest.started_at) LIMIT p_limit
        $$;
        REVOKE ALL ON FUNCTION paystream_processing_due(double precision, integer) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_processing_due(double precision, integer)
          TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_processing_due(double precision, integer)")
