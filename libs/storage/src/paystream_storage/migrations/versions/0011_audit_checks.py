"""The money audit's checks (`paystream audit`, the reconciler's audit metrics).

One SQL function per check returns its violations, across every tenant, as plain columns
(`paystream_core.audit` turns them into messages). They are owner-only (EXECUTE revoked
from PUBLIC): the CLI runs them as the owner. The reconciler runs its units as the app role,
which sees one tenant's rows only, so it calls `paystream_audit_counts`, a SECURITY DEFINER
function that returns nothing but a count per check, like `paystream_unresolved_count`.

Each check is one set-based statement: sequential scans and hash aggregates/joins, no
per-row subquery, so its cost grows linearly with the tables (a full audit reads
ledger_entries, balances, transactions and the outcome rows of the outbox). STABLE
functions run on the snapshot of the statement that calls them, so the counts of one call
are consistent with each other; the CLI runs all checks in one REPEATABLE READ transaction.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"
TERMINAL_EVENTS = (
    "('paystream.transaction.succeeded.v1', 'paystream.transaction.failed.v1',"
    " 'paystream.transaction.rejected.v1')"
)
DEFINER = "LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public"
OWNER_ONLY = "LANGUAGE sql STABLE SET search_path = pg_catalog, public"

# name -> (arguments, result columns, body). Every check returns tenant_id, transaction_id,
# account_id and currency first (NULL where they do not apply), then its own facts.
CHECKS: dict[str, tuple[str, str, str]] = {
    # Each transaction's legs sum to zero in each currency (design.md §4).
    "ledger_sums": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text, total numeric",
        """
        SELECT e.tenant_id, e.transaction_id, NULL::text, e.currency, sum(e.amount_minor)
        FROM ledger_entries e
        GROUP BY e.tenant_id, e.transaction_id, e.currency
        HAVING sum(e.amount_minor) <> 0
        """,
    ),
    # A balance row holds the sums of its account's `available` and `held` legs (the
    # `external` legs are the provider's side and have no row). No row counts as zeros.
    "balances_match_entries": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " available bigint, held bigint, entries_available numeric, entries_held numeric",
        """
        SELECT tenant_id, NULL::uuid, account_id, currency, available, held,
          entries_available, entries_held
        FROM paystream_audit_account_totals()
        WHERE coalesce(available, 0) <> entries_available OR coalesce(held, 0) <> entries_held
        """,
    ),
    # The database refuses a negative balance row; this also catches a dropped constraint
    # and legs that would put a balance below zero.
    "balances_nonnegative": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " available bigint, held bigint, entries_available numeric, entries_held numeric",
        """
        SELECT tenant_id, NULL::uuid, account_id, currency, available, held,
          entries_available, entries_held
        FROM paystream_audit_account_totals()
        WHERE available < 0 OR held < 0 OR entries_available < 0 OR entries_held < 0
        """,
    ),
    # A transaction's legs, netted per bucket, are what its type and status imply
    # (paystream_core.ledger): a succeeded deposit credited once, a withdrawal in flight
    # held, a succeeded one paid out, a failed one released, nothing else moved.
    "postings_match_status": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " type text, status text, amount_minor bigint, available numeric, held numeric,"
        " external numeric, elsewhere bigint",
        """
        SELECT a.* FROM (
          SELECT t.tenant_id, t.id, t.account_id, t.currency, t.type, t.status, t.amount_minor,
            coalesce(sum(e.amount_minor) FILTER (WHERE e.bucket = 'available' AND s.same), 0)
              AS available,
            coalesce(sum(e.amount_minor) FILTER (WHERE e.bucket = 'held' AND s.same), 0)
              AS held,
            coalesce(sum(e.amount_minor) FILTER (WHERE e.bucket = 'external' AND s.same), 0)
              AS external,
            count(*) FILTER (WHERE NOT s.same) AS elsewhere
          FROM transactions t
          LEFT JOIN ledger_entries e ON e.transaction_id = t.id
          CROSS JOIN LATERAL (SELECT e.tenant_id = t.tenant_id AND e.account_id = t.account_id
                                AND e.currency = t.currency AS same) s
          GROUP BY t.id
        ) a
        WHERE a.elsewhere > 0
          OR a.available <> CASE
            WHEN a.type = 'deposit' AND a.status = 'succeeded' THEN a.amount_minor
            WHEN a.type = 'withdrawal' AND a.status IN ('processing', 'action_required',
              'pending', 'unknown', 'succeeded') THEN -a.amount_minor
            ELSE 0 END
          OR a.held <> CASE
            WHEN a.type = 'withdrawal' AND a.status IN ('processing', 'action_required',
              'pending', 'unknown') THEN a.amount_minor
            ELSE 0 END
          OR a.external <> CASE
            WHEN a.type = 'deposit' AND a.status = 'succeeded' THEN -a.amount_minor
            WHEN a.type = 'withdrawal' AND a.status = 'succeeded' THEN a.amount_minor
            ELSE 0 END
        """,
    ),
    # Exactly one terminal outcome event per terminal transaction; none for the others or
    # for a transaction that does not exist.
    "terminal_events": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " type text, status text, terminal_events bigint",
        f"""
        SELECT coalesce(t.tenant_id, e.tenant_id), coalesce(t.id, e.transaction_id),
          t.account_id, t.currency, t.type, t.status, coalesce(e.n, 0)
        FROM transactions t
        FULL JOIN (
          SELECT (o.data->>'transaction_id')::uuid AS transaction_id, o.tenant_id,
            count(*) AS n
          FROM outbox o
          WHERE o.topic = 'outcomes' AND o.event_type IN {TERMINAL_EVENTS}
          GROUP BY 1, 2
        ) e ON e.transaction_id = t.id
        WHERE (t.id IS NULL)
          OR (t.status IN ('succeeded', 'failed', 'rejected') AND coalesce(e.n, 0) <> 1)
          OR (t.status NOT IN ('succeeded', 'failed', 'rejected') AND e.n > 0)
        """,
    ),
    # Every version after the first has its outcome event, so the newest event is the
    # current version's and says the current status (version 1, `received`, has none).
    "last_event_matches": (
        "",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " type text, status text, version integer, event_version integer, event_status text",
        """
        SELECT t.tenant_id, t.id, t.account_id, t.currency, t.type, t.status, t.version,
          max(ev.version), max(ev.status) FILTER (WHERE ev.version = t.version)
        FROM transactions t
        LEFT JOIN (
          SELECT (o.data->>'transaction_id')::uuid AS transaction_id,
            (o.data->>'version')::integer AS version, o.data->>'status' AS status
          FROM outbox o WHERE o.topic = 'outcomes'
        ) ev ON ev.transaction_id = t.id
        GROUP BY t.id
        HAVING max(ev.version) IS DISTINCT FROM CASE WHEN t.version > 1 THEN t.version END
          OR (t.version > 1
              AND max(ev.status) FILTER (WHERE ev.version = t.version) IS DISTINCT FROM t.status)
        """,
    ),
    # The reconciler's horizons (`paystream transactions unresolved`): pending, unknown or
    # action_required this long after creation; received/processing unchanged this long.
    "stuck_transactions": (
        "p_horizon_s double precision, p_stuck_processing_s double precision",
        "tenant_id uuid, transaction_id uuid, account_id text, currency text,"
        " type text, status text, created_at timestamptz, updated_at timestamptz,"
        " age_s double precision",
        """
        SELECT t.tenant_id, t.id, t.account_id, t.currency, t.type, t.status, t.created_at,
          t.updated_at, extract(epoch FROM now() - CASE WHEN t.status IN ('received',
            'processing') THEN t.updated_at ELSE t.created_at END)::double precision
        FROM transactions t
        WHERE (t.status IN ('pending', 'unknown', 'action_required')
               AND t.created_at <= now() - make_interval(secs => p_horizon_s))
           OR (t.status IN ('received', 'processing')
               AND t.updated_at <= now() - make_interval(secs => p_stuck_processing_s))
        """,
    ),
}


def _signature(name: str) -> str:
    arguments = CHECKS[name][0]
    types = ", ".join(p.strip().split(" ", 1)[1] for p in arguments.split(",")) if arguments else ""
    return f"paystream_audit_{name}({types})"


def upgrade() -> None:
    # Per account and currency: the balance row (if any) next to the sums of its legs.
    op.execute(
        f"""
        CREATE FUNCTION paystream_audit_account_totals()
        RETURNS TABLE (tenant_id uuid, account_id text, currency text, available bigint,
          held bigint, entries_available numeric, entries_held numeric)
        {OWNER_ONLY} AS $$
          SELECT coalesce(b.tenant_id, e.tenant_id), coalesce(b.account_id, e.account_id),
            coalesce(b.currency, e.currency), b.available_minor, b.held_minor,
            coalesce(e.available, 0), coalesce(e.held, 0)
          FROM balances b
          FULL JOIN (
            SELECT tenant_id, account_id, currency,
              coalesce(sum(amount_minor) FILTER (WHERE bucket = 'available'), 0) AS available,
              coalesce(sum(amount_minor) FILTER (WHERE bucket = 'held'), 0) AS held
            FROM ledger_entries GROUP BY tenant_id, account_id, currency
          ) e ON e.tenant_id = b.tenant_id AND e.account_id = b.account_id
            AND e.currency = b.currency
        $$;
        REVOKE ALL ON FUNCTION paystream_audit_account_totals() FROM PUBLIC;
        """
    )
    for name, (arguments, columns, body) in CHECKS.items():
        op.execute(
            f"""
            CREATE FUNCTION paystream_audit_{name}({arguments}) RETURNS TABLE ({columns})
            {OWNER_ONLY} AS $$ {body} $$;
            REVOKE ALL ON FUNCTION {_signature(name)} FROM PUBLIC;
            """
        )
    counts = "\n UNION ALL ".join(
        f"SELECT '{name}'::text, count(*) FROM paystream_audit_{name}("
        + ("p_horizon_s, p_stuck_processing_s" if arguments else "")
        + ")"
        for name, (arguments, _, _) in CHECKS.items()
    )
    op.execute(
        f"""
        CREATE FUNCTION paystream_audit_counts(
          p_horizon_s double precision, p_stuck_processing_s double precision)
        RETURNS TABLE (check_name text, violations bigint)
        {DEFINER} AS $$ {counts} $$;
        REVOKE ALL ON FUNCTION paystream_audit_counts(double precision, double precision)
          FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION paystream_audit_counts(double precision, double precision)
          TO {APP_ROLE};
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS paystream_audit_counts(double precision, double precision)")
    for name in CHECKS:
        op.execute(f"DROP FUNCTION IF EXISTS {_signature(name)}")
    op.execute("DROP FUNCTION IF EXISTS paystream_audit_account_totals()")
