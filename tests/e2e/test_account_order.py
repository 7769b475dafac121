"""Per-account order through the running gateway worker (issue 13, part 4).

50 accounts x 20 commands go straight to the commands topic, round-robin over the accounts
(so every partition mixes accounts), keyed by the account as the ingest API keys them. In
the middle of some accounts: records that fail validation, one the database refuses (the
worker retries it, then dead-letters it), one that fails transiently, and Idempotency-Keys
reused with another body. Each account's commands must apply in offset order while
accounts are taken in together; `tests/support/account_order.py` says what "apply" means
and which stored values witness the order.

One run of the commands serves every test here: under a minute in all, on the shared stack
(tests/e2e/conftest.py). Its accounts are its own (a run id in their names), and so are
the dead letters it reads (by the commands' partition and offset); the database
instrumentation it needs (a column, a trigger on its own keys) is removed at the end.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime

import psycopg
import pytest
from psycopg import sql

from paystream_keyring import KeyRing
from paystream_keyring.dev_files import DEV_KEYRING_FILE, read_keyring_file
from tests.e2e.stack import Stack
from tests.support.account_order import (
    DEAD_REASONS,
    FUNDS_MINOR,
    HOLDING_KINDS,
    STORED_KINDS,
    Observed,
    Produced,
    StoredRow,
    Target,
    expected_holds,
    run,
)
from tests.support.databases import libpq

pytestmark = pytest.mark.e2e

ACCOUNTS, COMMANDS = 50, 20


@pytest.fixture(scope="module")
def observed(shared_stack: Stack) -> Iterator[Observed]:
    stack = shared_stack
    # The worker's health server: its in-flight gauge.
    port = stack.env_port("PAYSTREAM_WORKER_WEB_PORT")
    target = Target(
        database_url=stack.env["PAYSTREAM_DATABASE_URL"],
        bootstrap=stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"],
        topic_prefix=stack.env["PAYSTREAM_TOPIC_PREFIX"],
        tenant=uuid.UUID(stack.env["PAYSTREAM_DEMO_TENANT_ID"]),
        ring=KeyRing.from_settings(read_keyring_file(stack.home / DEV_KEYRING_FILE)),
        worker_metrics_url=f"http://127.0.0.1:{port}/metrics",
    )
    try:
        yield run(target, accounts=ACCOUNTS, commands=COMMANDS, seed=13)
    finally:
        uninstrument(target.database_url)


def uninstrument(database_url: str) -> None:
    """The database as other modules expect it: without the trigger, its function, the
    per-key sequences and the column `account_order.instrument` added (if it got that far)."""
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS account_order_faults ON transactions")
        conn.execute("DROP FUNCTION IF EXISTS account_order_faults()")
        for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'S' AND relname LIKE 'flaky-%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP SEQUENCE {}").format(sql.Identifier(name)))
        conn.execute("ALTER TABLE transactions DROP COLUMN IF EXISTS stored_seq")


def test_the_commands_interleave_accounts_on_every_partition(observed: Observed) -> None:
    """The setup itself: one partition per account, several accounts per partition."""
    partitions: dict[str, set[int]] = {}
    accounts: dict[int, set[str]] = {}
    for r in observed.produced:
        partitions.setdefault(r.planned.account, set()).add(r.partition)
        accounts.setdefault(r.partition, set()).add(r.planned.account)
    assert all(len(p) == 1 for p in partitions.values())
    assert len(accounts) > 1
    assert all(len(a) > 1 for a in accounts.values()), "a partition holds one account only"


def test_each_accounts_transactions_are_stored_in_offset_order(observed: Observed) -> None:
    """Dead-lettered commands that name their transaction included (stored `rejected`)."""
    problems = []
    for account, records in observed.in_offset_order().items():
        expected = [r.planned.key for r in records if r.planned.kind in STORED_KINDS]
        found = {r.key for r in observed.rows.values() if r.account == account}
        unexpected = found - set(expected) - {f"funds-{account}"}
        if unexpected or set(expected) - found:
            problems.append(f"{account}: not stored {set(expected) - found}, also {unexpected}")
            continue
        rows = [observed.rows[k] for k in expected]
        stored = [r.key for r in sorted(rows, key=lambda r: r.stored_seq)]
        if stored != expected:
            i = next(i for i, (s, e) in enumerate(zip(stored, expected, strict=True)) if s != e)
            problems.append(f"{account}: {stored[i]} stored where offset order has {expected[i]}")
        # The storing transaction's start: equal inside a batch, never earlier after it.
        for earlier, later in itertools.pairwise(rows):
            if later.created_at < earlier.created_at:
                problems.append(f"{account}: {later.key} stored in a batch before {earlier.key}")
    assert not problems, "\n".join(problems[:20])


def test_batches_hold_many_accounts_and_several_commands_of_one(observed: Observed) -> None:
    """The setup again: accounts are taken in together (order is per account, not one
    account at a time), and some batches hold several commands of one account, so order
    inside a batch is tested too. Rows stored together share their `created_at`."""
    batches: dict[datetime, list[str]] = {}
    for row in observed.rows.values():
        batches.setdefault(row.created_at, []).append(row.account)
    assert max(len(set(accounts)) for accounts in batches.values()) > 1
    assert max(len(accounts) - len(set(accounts)) for accounts in batches.values()) > 0


def test_holds_are_taken_in_offset_order(observed: Observed) -> None:
    """Exactly the withdrawals that offset order affords are accepted, and their funds are
    held in that order (the order of their hold legs in the ledger)."""
    problems = []
    for account, records in observed.in_offset_order().items():
        taken = expected_holds([r.planned for r in records])
        for key, held in taken.items():
            row = observed.rows.get(key)
            want = ("succeeded", None) if held else ("rejected", "insufficient_funds")
            if row is not None and (row.status, row.failure_code) != want:
                got = (row.status, row.failure_code)
                problems.append(f"{account}: {key} is {got}, offset order gives {want}")
        holds = [k for k in observed.holds if k in taken]
        if holds != [k for k, held in taken.items() if held]:
            problems.append(f"{account}: holds taken in the order {holds}")
    assert not problems, "\n".join(problems[:20])


def test_balances_are_what_offset_order_gives(observed: Observed) -> None:
    problems = []
    for script in observed.plans:
        account = script[0].account
        taken = expected_holds(script)
        paid_out = sum(c.amount_minor for c in script if c.kind in HOLDING_KINDS and taken[c.key])
        credited = sum(c.amount_minor for c in script if c.kind == "deposit")
        want = (FUNDS_MINOR + credited - paid_out, 0)
        if observed.balances.get(account) != want:
            problems.append(f"{account}: balance {observed.balances.get(account)}, want {want}")
    assert not problems, "\n".join(problems[:20])


def test_the_first_body_under_a_key_wins(observed: Observed) -> None:
    reused = [r for r in observed.produced if r.planned.kind == "conflict"]
    assert reused
    for r in reused:
        records = observed.in_offset_order()[r.planned.account]
        first = next(p for p in records if p.planned.key == r.planned.key)
        assert first.offset < r.offset
        assert observed.rows[r.planned.key].amount_minor == first.planned.amount_minor


def test_poison_records_are_dead_lettered_with_their_reason(observed: Observed) -> None:
    """Each once, and those that name a transaction are stored `rejected` for that reason."""
    problems = []
    for r in observed.produced:
        letters = observed.dead.get((r.partition, r.offset), [])
        reason = DEAD_REASONS.get(r.planned.kind)
        said = [letter.headers["dlq_reason"].decode() for letter in letters]
        if reason is None and said:
            problems.append(f"{r.planned.label} dead-lettered: {said}")
        elif reason is not None and (len(said) != 1 or not said[0].startswith(reason)):
            problems.append(f"{r.planned.label}: dead letters {said}")
        if reason is not None and r.planned.kind in STORED_KINDS:
            row = observed.rows.get(r.planned.key)
            got = (row.status, row.failure_code) if row else "not stored"
            if got != ("rejected", reason):
                problems.append(f"{r.planned.label}: {got}")
    assert not problems, "\n".join(problems)


def test_a_poison_record_is_dead_lettered_in_its_place(observed: Observed) -> None:
    """The command before a poison record of the same account is stored before the poison
    is dead-lettered, the command after it only after. Witnesses: the dead letter's
    `dlq_at` (stamped before it is sent) and each row's `created_at` (when its storing
    transaction began), both read from this machine's clock."""
    problems = []
    for records in observed.in_offset_order().values():
        for i, r in enumerate(records):
            letters = observed.dead.get((r.partition, r.offset))
            if r.planned.kind not in DEAD_REASONS or not letters:
                continue  # missing dead letters fail the test above
            at = datetime.fromisoformat(letters[0].headers["dlq_at"].decode())
            before = _stored(observed, reversed(records[:i]))
            after = _stored(observed, records[i + 1 :])
            what = f"{r.planned.label} was dead-lettered ({at.time()})"
            if before is not None and before.created_at >= at:
                problems.append(f"{before.key} stored {before.created_at.time()}, after {what}")
            if after is not None and after.created_at <= at:
                problems.append(f"{after.key} stored {after.created_at.time()}, before {what}")
    assert not problems, "\n".join(problems)


def _stored(observed: Observed, records: Iterable[Produced]) -> StoredRow | None:
    """The first of `records` that stored a transaction."""
    keys = (r.planned.key for r in records if r.planned.kind in STORED_KINDS)
    return next((observed.rows[k] for k in keys if k in observed.rows), None)
