"""Routing that uses gateway health: route weights, why each attempt went where it went,
and the recent success rate per gateway, country and type.

- `gateway_countries.weight` (1..10000, default 100): routes of equal priority split the
  volume in proportion (`paystream_core.ranking`). A configuration column like the others:
  the `config_changed` trigger (0006) already moves config_version on every change to it.
- `attempts.route_reason`: the ranking's reason for the gateway of this attempt ("priority
  1; weight 70 of 100 (draw 0.42)", "demoted: ..."), for operators. NULL on older rows.
- `paystream_route_health(window)`: final attempts (`succeeded`, `declined`) finished in the
  last `window` seconds, per gateway, country and type, and how many succeeded. Health is
  global (a gateway declines every tenant's payments alike) while attempts are under
  row-level security, so, like the reconciler's functions, it is SECURITY DEFINER and
  returns counts, never a row of any tenant. Migration 0014 makes it read attempts alone,
  with an index (built concurrently) on the window's rows.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"


def upgrade() -> None:
    op.add_column(
        "gateway_countries",
        sa.Column("weight", sa.Integer(), server_default=sa.text("100"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_gateway_countries_weight"),
        "gateway_countries",
        "weight BETWEEN 1 AND 10000",
    )
    op.add_column("attempts", sa.Column("route_reason", sa.Text(), nullable=True))
    op.execute(
        f"""
        CREATE FUNCTION paystream_route_health(p_window_s double precision)
        RETURNS TABLE (gateway_code text, country text, transaction_type text,
                       final bigint, succeeded bigint)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
          SELECT a.gateway_code::text, t.country::text, t.type::text, count(*),
            count(*) FILTER (WHERE a.status = 'succeeded')
          FROM attempts a JOIN transactions t ON t.id = a.transaction_id
          WHERE a.finished_at > now() - make_interval(secs => p_window_s)
            AND a.status IN ('succeeded', 'declined')
          GROUP BY 1, 2, 3
        $$;
        REVOKE ALL ON FUNCTION paystream_route_health(double precision) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_route_health(double precision) TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_route_health(double precision)")
    op.drop_column("attempts", "route_reason")
    op.drop_constraint(op.f("ck_gateway_countries_weight"), "gateway_countries", type_="check")
    op.drop_column("gateway_countries", "weight")
