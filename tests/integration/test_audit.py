"""`paystream audit` on a fresh database: books written the way the payment units write
them pass every check; each corruption is caught by exactly the checks it breaks, naming
the transaction or the account."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from paystream_cli.main import cli
from paystream_config import DatabaseSettings
from paystream_core.audit import CHECK_NAMES, CHECKS, Horizons
from paystream_core.ledger import legs, posting
from paystream_core.statuses import Status, TransactionType
from paystream_provider_reports.metrics import CallbackMetrics
from paystream_provider_reports.reconciler import AuditExporter
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_storage.audit import PgAuditCounts, audit_snapshot, run_check
from tests.support.databases import libpq

pytestmark = pytest.mark.integration

D, W = TransactionType.DEPOSIT, TransactionType.WITHDRAWAL
HORIZONS = Horizons(horizon_s=86_400, stuck_processing_s=900)
TERMINAL = ("succeeded", "failed", "rejected")


@dataclass
class Books:
    """Writes transactions as the payment units do: legs of each move, the balance, one
    outcome event per version."""

    conn: psycopg.Connection[tuple[object, ...]]
    tenant: uuid.UUID

    def book(
        self,
        kind: TransactionType,
        status: Status,
        amount: int = 1000,
        *,
        account: str = "acct-1",
        currency: str = "EUR",
        age: str = "1 second",
        post: bool = True,
    ) -> uuid.UUID:
        txn = uuid.uuid4()
        path = [Status.RECEIVED]
        if status not in (Status.RECEIVED, Status.REJECTED):
            path.append(Status.PROCESSING)
        if status not in path:
            path.append(status)
        c = self.conn
        c.execute(
            "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, %s, 'DE')"
            " ON CONFLICT DO NOTHING",
            (self.tenant, account),
        )
        c.execute(
            "INSERT INTO transactions (id, tenant_id, account_id, type, status, version,"
            " amount_minor, currency, country, idempotency_key, payload_hash, created_at,"
            " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'DE', %s, 'h',"
            " now() - %s::interval, now() - %s::interval)",
            [txn, self.tenant, account, kind, status, len(path), amount, currency, str(txn)]
            + [age] * 2,
        )
        available = held = 0
        for version, (old, new) in enumerate(itertools.pairwise(path), start=2):
            event = posting(kind, old, new)
            for leg in legs(event, amount) if event is not None and post else ():
                c.execute(
                    "INSERT INTO ledger_entries (tenant_id, transaction_id, account_id, bucket,"
                    " currency, amount_minor) VALUES (%s, %s, %s, %s, %s, %s)",
                    (self.tenant, txn, account, leg.bucket, currency, leg.amount_minor),
                )
                available += leg.amount_minor if leg.bucket == "available" else 0
                held += leg.amount_minor if leg.bucket == "held" else 0
            self.event(txn, version, new)
        # Created first, then changed: PostgreSQL checks an INSERT's row against the
        # constraints before it looks for a conflict.
        c.execute(
            "INSERT INTO balances (tenant_id, account_id, currency) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (self.tenant, account, currency),
        )
        c.execute(
            "UPDATE balances SET available_minor = available_minor + %s,"
            " held_minor = held_minor + %s"
            " WHERE tenant_id = %s AND account_id = %s AND currency = %s",
            (available, held, self.tenant, account, currency),
        )
        return txn

    def event(self, txn: uuid.UUID, version: int, status: Status | str) -> None:
        data = {"transaction_id": str(txn), "version": version, "status": str(status)}
        self.conn.execute(
            "INSERT INTO outbox (tenant_id, topic, key, shard, event_id, event_type, source,"
            " occurred_at, data) VALUES (%s, 'outcomes', 'k', 0, %s, %s, 'test', now(), %s)",
            (self.tenant, uuid.uuid4(), f"paystream.transaction.{status}.v1", Jsonb(data)),
        )


@pytest.fixture
def books(database_url: str) -> Iterator[Books]:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        tenant = uuid.uuid4()
        conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, f"t-{tenant}"))
        yield Books(conn, tenant)


def _found(database_url: str) -> dict[str, list[str]]:
    """Per check that found any: the transaction ids (or account ids) it names."""

    async def go() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        async with audit_snapshot(DatabaseSettings(database_url=database_url)) as conn:
            for check in CHECKS:
                result = await run_check(conn, check, HORIZONS, limit=100)
                assert result.violations == len(result.details)
                if result.details:
                    found[check.name] = sorted(
                        str(v.transaction_id or v.account_id) for v in result.details
                    )
        return found

    return asyncio.run(go())


def _healthy(books: Books) -> dict[str, uuid.UUID]:
    """Every type and status, several on one account, written as the units write them."""
    booked = {}
    books.book(D, Status.SUCCEEDED, 100_000, account="rich")
    for kind, status in itertools.product(TransactionType, Status):
        account = "rich" if kind == W else "acct-1"
        booked[f"{kind}-{status}"] = books.book(kind, status, 700, account=account)
    return booked


def test_books_written_like_the_units_pass_every_check(books: Books, database_url: str) -> None:
    _healthy(books)
    books.book(D, Status.SUCCEEDED, 500, currency="GBP")
    assert _found(database_url) == {}
    counts = asyncio.run(
        PgAuditCounts(DatabaseSettings(database_url=database_url)).counts(HORIZONS)
    )
    assert counts == dict.fromkeys(CHECK_NAMES, 0)


def test_an_unbalanced_posting(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["deposit-succeeded"]
    books.conn.execute(
        "UPDATE ledger_entries SET amount_minor = amount_minor + 1"
        " WHERE transaction_id = %s AND bucket = 'external'",
        (txn,),
    )
    # The legs no longer net to zero, and no longer say "credited 700 from outside".
    assert _found(database_url) == {
        "ledger_sums": [str(txn)],
        "postings_match_status": [str(txn)],
    }


def test_a_corrupted_balance(books: Books, database_url: str) -> None:
    _healthy(books)
    books.conn.execute(
        "UPDATE balances SET available_minor = available_minor + 1 WHERE account_id = 'acct-1'"
    )
    assert _found(database_url) == {"balances_match_entries": ["acct-1"]}


def test_entries_without_a_balance_row(books: Books, database_url: str) -> None:
    _healthy(books)
    books.conn.execute("DELETE FROM balances WHERE account_id = 'acct-1'")
    assert _found(database_url) == {"balances_match_entries": ["acct-1"]}


def test_a_balance_below_zero(books: Books, database_url: str) -> None:
    """Only possible with the constraint gone: a hold posted without the funds."""
    _healthy(books)
    books.conn.execute("ALTER TABLE balances DROP CONSTRAINT ck_balances_available_nonnegative")
    books.book(W, Status.PENDING, 300, account="overdrawn")
    assert _found(database_url) == {"balances_nonnegative": ["overdrawn"]}


def test_a_success_never_credited(books: Books, database_url: str) -> None:
    _healthy(books)
    txn = books.book(D, Status.SUCCEEDED, 900, account="uncredited", post=False)
    assert _found(database_url) == {"postings_match_status": [str(txn)]}


def test_a_credit_on_another_account(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["deposit-succeeded"]
    books.conn.execute(
        "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, 'other', 'DE')", (books.tenant,)
    )
    books.conn.execute(
        "UPDATE ledger_entries SET account_id = 'other' WHERE transaction_id = %s", (txn,)
    )
    # The balances moved with the entries, so every account still equals its entries: only
    # the transaction's own postings show the money went to the wrong account.
    books.conn.execute(
        "UPDATE balances SET available_minor = available_minor - 700 WHERE account_id = 'acct-1'"
    )
    books.conn.execute(
        "INSERT INTO balances (tenant_id, account_id, currency, available_minor)"
        " VALUES (%s, 'other', 'EUR', 700)",
        (books.tenant,),
    )
    assert _found(database_url) == {"postings_match_status": [str(txn)]}


def test_a_deleted_outcome_event(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["withdrawal-succeeded"]
    books.conn.execute(
        "DELETE FROM outbox WHERE data->>'transaction_id' = %s"
        " AND event_type = 'paystream.transaction.succeeded.v1'",
        (str(txn),),
    )
    # No terminal event, and the newest event left is an older version's.
    assert _found(database_url) == {
        "terminal_events": [str(txn)],
        "last_event_matches": [str(txn)],
    }


def test_a_second_terminal_event(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["deposit-failed"]
    books.event(txn, 3, "failed")  # same version, same status: only the count is wrong
    assert _found(database_url) == {"terminal_events": [str(txn)]}


def test_a_terminal_event_for_an_open_transaction(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["deposit-pending"]
    books.event(txn, 2, "succeeded")  # an older version said succeeded: not absorbing
    books.conn.execute(
        "DELETE FROM outbox WHERE data->>'transaction_id' = %s AND data->>'status' = 'processing'",
        (str(txn),),
    )
    assert _found(database_url) == {"terminal_events": [str(txn)]}


def test_an_event_for_no_transaction(books: Books, database_url: str) -> None:
    _healthy(books)
    ghost = uuid.uuid4()
    books.event(ghost, 2, "rejected")
    assert _found(database_url) == {"terminal_events": [str(ghost)]}


def test_a_status_its_last_event_contradicts(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["withdrawal-pending"]
    books.conn.execute(
        "UPDATE outbox SET data = jsonb_set(data, '{status}', '\"action_required\"')"
        " WHERE data->>'transaction_id' = %s AND data->>'version' = '3'",
        (str(txn),),
    )
    assert _found(database_url) == {"last_event_matches": [str(txn)]}


def test_a_status_changed_without_its_event(books: Books, database_url: str) -> None:
    txns = _healthy(books)
    txn = txns["deposit-unknown"]
    books.conn.execute(
        "UPDATE transactions SET status = 'pending', version = 4 WHERE id = %s", (txn,)
    )
    assert _found(database_url) == {"last_event_matches": [str(txn)]}


def test_stuck_transactions_past_the_horizons(books: Books, database_url: str) -> None:
    _healthy(books)
    old_pending = books.book(D, Status.PENDING, age="25 hours")
    old_action = books.book(D, Status.ACTION_REQUIRED, age="25 hours")
    stuck = books.book(D, Status.PROCESSING, age="20 minutes")
    books.book(D, Status.PENDING, age="23 hours")  # within the horizon
    books.book(D, Status.SUCCEEDED, age="30 hours")  # done long ago
    assert _found(database_url) == {
        "stuck_transactions": sorted(str(t) for t in (old_pending, old_action, stuck))
    }


def test_the_cli_summary_details_json_and_exit_codes(
    books: Books, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYSTREAM_DATABASE_URL", database_url)
    txns = _healthy(books)
    runner = CliRunner()
    clean = runner.invoke(cli, ["audit"])
    assert clean.exit_code == 0, clean.output
    assert "OK: no violations" in clean.output
    assert "[1/7]" not in clean.output  # progress only on a terminal, or when asked
    progress = runner.invoke(cli, ["audit", "--json", "--progress"])
    assert "[7/7] nothing stuck past the horizons ... 0 violation(s)" in progress.stderr
    assert json.loads(progress.stdout)["ok"] is True  # stdout stays one JSON document
    for check in CHECK_NAMES:
        assert f"\n{check} " in clean.output

    txn = txns["deposit-succeeded"]
    books.conn.execute(
        "DELETE FROM outbox WHERE data->>'transaction_id' = %s AND data->>'version' = '3'",
        (str(txn),),
    )
    books.conn.execute("UPDATE balances SET held_minor = held_minor + 5 WHERE account_id = 'rich'")
    summary = runner.invoke(cli, ["audit"])
    assert summary.exit_code == 1, summary.output
    assert "FAILED: 3 violation(s) in 3 check(s)" in summary.output
    assert str(txn) not in summary.output  # details only with --verbose

    verbose = runner.invoke(cli, ["audit", "--verbose"])
    assert verbose.exit_code == 1
    assert f"deposit {txn} is succeeded but has 0 terminal outcome events, not 1" in verbose.output
    assert "account 'rich' EUR: balance available" in verbose.output

    as_json = runner.invoke(cli, ["audit", "--json", "--limit", "0"])
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    by_check = {c["check"]: c for c in document["checks"]}
    assert document["violations"] == 3
    assert by_check["terminal_events"]["violations"] == 1
    assert by_check["terminal_events"]["truncated"] is True
    assert by_check["balances_match_entries"]["violations"] == 1

    detailed = json.loads(runner.invoke(cli, ["audit", "--json"]).stdout)
    [missing] = {c["check"]: c for c in detailed["checks"]}["terminal_events"]["details"]
    assert missing["transaction_id"] == str(txn)
    assert missing["tenant_id"] == str(books.tenant)

    assert runner.invoke(cli, ["audit", "--limit", "-1"]).exit_code == 2
    # Tighter horizons from the command line (the reconciler's are the default).
    stuck = runner.invoke(cli, ["audit", "--json", "--stuck-after", "0", "--older-than", "0"])
    stuck_check = {c["check"]: c for c in json.loads(stuck.stdout)["checks"]}
    # received, processing, action_required, pending and unknown, of each type
    assert stuck_check["stuck_transactions"]["violations"] == 10


def test_the_reconciler_exports_the_counts_as_the_app_role(database_url: str, books: Books) -> None:
    _healthy(books)
    other = Books(books.conn, uuid.uuid4())
    books.conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 'other')", (other.tenant,))
    other.book(D, Status.SUCCEEDED, 400, account="x")
    books.conn.execute(
        "UPDATE balances SET available_minor = available_minor + 1"
        " WHERE account_id IN ('acct-1', 'x')"
    )
    settings = ReconcilerSettings(database_url=database_url)
    metrics = CallbackMetrics()
    exporter = AuditExporter(PgAuditCounts(settings), metrics, settings)
    counts = asyncio.run(exporter.run_once())
    # Both tenants' rows are counted, though the app role sees none of them itself.
    assert counts["balances_match_entries"] == 2
    value = metrics.registry.get_sample_value
    assert value("paystream_audit_violations", {"check": "balances_match_entries"}) == 2
    assert value("paystream_audit_violations", {"check": "ledger_sums"}) == 0
    assert (value("paystream_audit_last_success_timestamp_seconds") or 0) > 0

    # The per-check functions, which return rows, stay the owner's.
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("SET ROLE paystream_app")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM paystream_audit_balances_match_entries()")
