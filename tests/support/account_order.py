"""Per-account order through the running gateway worker: the commands a test produces,
what offset order predicts for them, and the probes that show the order the worker stored
them in.

What "apply" means: intake stores a command's transaction and, for a withdrawal, holds its
amount; provider calls run afterwards, concurrently, and a deposit's credit comes with the
provider's answer. So order is a property of intake, and these are its witnesses:

- `transactions.created_at` is `now()`, the start of the database transaction that stored
  the row: it orders the worker's batches (taken in one after another), but every row of
  one batch has the same value.
- Inside one database transaction nothing in the schema orders the rows (the ids are
  UUIDs), so the test adds an identity column (`stored_seq`): PostgreSQL numbers the rows
  as the worker's INSERT writes them, which is the order they were stored in.
- The hold legs in `ledger_entries` (serial ids) are the order the holds were taken, the
  order that decides which of an account's withdrawals find the funds; and which
  withdrawals were refused for insufficient funds shows it too (see `expected_holds`).

A command that is dead-lettered is stored too when its record names a transaction (as
`rejected`, so that its client can see what became of it): that row belongs in its place
among the account's transactions like any other.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import psycopg
from confluent_kafka import KafkaException, Message, Producer
from psycopg import sql

from paystream_core.ids import payload_hash, transaction_id
from paystream_core.statuses import TERMINAL
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_keyring import KeyRing
from paystream_messaging.cloudevents_codec import KafkaRecord, encode
from paystream_messaging.commands import RequestDeposit, RequestWithdrawal, SealedDestination
from paystream_messaging.schemas import SchemaRegistry
from tests.support.databases import libpq
from tests.support.kafka import Received, consume_until
from tests.support.polling import wait_for

# deposit, withdrawal: good commands; flaky: a withdrawal whose first inserts fail
# transiently; invalid: fails validation but names its transaction (metadata the schema
# refuses); unreadable: fails validation and names nothing usable (amount 0); refused: a
# withdrawal the database refuses to store (with its metadata); conflict: the key of an
# earlier command of the account with another amount.
Kind = Literal["deposit", "withdrawal", "flaky", "invalid", "unreadable", "refused", "conflict"]
# Kinds that leave a transaction of their own: dead-lettered ones as `rejected`.
STORED_KINDS: frozenset[Kind] = frozenset({"deposit", "withdrawal", "flaky", "invalid", "refused"})
HOLDING_KINDS: frozenset[Kind] = frozenset({"withdrawal", "flaky"})
# What the dead letter of each kind of poison record says first (also the failure code of
# the rejected transaction, for those that have one).
DEAD_REASONS: dict[Kind, str] = {
    "invalid": "invalid_event",
    "unreadable": "invalid_event",
    "refused": "processing_failed",
    "conflict": "idempotency_conflict",
}

# Every account starts with 100.00 EUR (deposits that succeed before the test's commands).
FUNDS_MINOR = 10_000
# Withdrawals are whole multiples of 5.00 EUR, and the deposits among the test's commands
# add up to less than that per account: a deposit is credited when its provider answers
# (in the background, at any time), and this way whether an earlier deposit's credit landed
# before a withdrawal's hold can never change the hold's outcome. Only the holds' order can.
STEP_MINOR = 500
MAX_DEPOSIT_MINOR = 4  # x 20 commands < STEP_MINOR
COUNTRY, CURRENCY = "DE", "EUR"
DESTINATION = {"holder_name": "Order Test", "iban": "DE89370400440532013000"}
SOURCE = "/test/account-order"
# How many commands the worker reads ahead of the ones it finished (its default).
WORKER_IN_FLIGHT = GatewayWorkerSettings.model_fields["worker_concurrency"].default

# The test database refuses to store `refused-*` keys with their metadata (like a value
# PostgreSQL cannot hold: the worker retries, stores the transaction `rejected` without the
# metadata, and dead-letters the record) and fails the first FLAKY_FAILURES inserts of
# each `flaky-*` key with a serialization failure (a transient error: retried until it
# goes through), counting them in a sequence per key (sequences ignore rollbacks).
FLAKY_FAILURES = 3
INSTRUMENT = f"""
ALTER TABLE transactions ADD COLUMN stored_seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE FUNCTION account_order_faults() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  IF NEW.idempotency_key LIKE 'refused-%' AND NEW.metadata <> '{{}}' THEN
    RAISE EXCEPTION 'the test database refuses %', NEW.idempotency_key;
  END IF;
  IF NEW.idempotency_key LIKE 'flaky-%'
     AND nextval(quote_ident(NEW.idempotency_key)) <= {FLAKY_FAILURES} THEN
    RAISE EXCEPTION 'the test database fails % this time', NEW.idempotency_key
      USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER account_order_faults BEFORE INSERT ON transactions
  FOR EACH ROW EXECUTE FUNCTION account_order_faults();
"""


@dataclass(frozen=True)
class Planned:
    """One record the test produces: `position` in its account's sequence."""

    account: str
    position: int
    kind: Kind
    key: str
    amount_minor: int

    @property
    def label(self) -> str:
        return f"{self.account}#{self.position} ({self.kind})"


@dataclass(frozen=True)
class Produced:
    planned: Planned
    partition: int
    offset: int


@dataclass(frozen=True)
class StoredRow:
    key: str
    account: str
    type: str
    status: str
    failure_code: str | None
    amount_minor: int
    stored_seq: int
    created_at: datetime


# The record that fails transiently (a withdrawal) in a few accounts, and the one the
# database refuses in one: (account, position).
FLAKY_AT = ((23, 1), (28, 2), (35, 3), (41, 4))
REFUSED_AT = (7, 10)
# Every other account has one poison record somewhere in the middle (the first and the
# last position once each), cycling through these kinds. Whether a poison record shares a
# batch with the next command of its account depends on how the worker's batches fall, so
# there are many of them.
POISONS: tuple[Kind, ...] = ("invalid", "unreadable", "conflict")
FIRST_AND_LAST = {17: 0, 44: 19}


def scripts(accounts: int, commands: int, *, seed: int) -> list[list[Planned]]:
    """`commands` records per account: deposits and withdrawals (random, reproducible) and,
    in the middle, a poison record (fails validation, or reuses an earlier command's key
    with another amount), or a record the database refuses, or one that fails transiently.
    """
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    plans: list[list[Planned]] = []
    for a in range(accounts):
        account = f"order-{run}-{a:02d}"
        script: list[Planned] = []
        for p in range(commands):
            if rng.random() < 0.55:
                kind: Kind = "withdrawal"
                amount = STEP_MINOR * rng.randint(1, 8)
            else:
                kind, amount = "deposit", rng.randint(1, MAX_DEPOSIT_MINOR)
            script.append(Planned(account, p, kind, f"{kind}-{account}-{p}", amount))
        plans.append(script)
    specials = {a for a, _ in FLAKY_AT} | {REFUSED_AT[0]}
    for a, p in FLAKY_AT:
        plans[a][p] = _special(plans[a][p], "flaky")
    plans[REFUSED_AT[0]][REFUSED_AT[1]] = _special(plans[REFUSED_AT[0]][REFUSED_AT[1]], "refused")
    for a, script in enumerate(plans):
        if a in specials:
            continue
        p = FIRST_AND_LAST.get(a, 1 + (a * 7) % (commands - 2))
        withdrawals = [c for c in script[:p] if c.kind == "withdrawal"]
        poison = POISONS[a % len(POISONS)]
        if poison == "conflict" and withdrawals:
            first = withdrawals[0]
            more = first.amount_minor + STEP_MINOR
            script[p] = replace(first, position=p, kind="conflict", amount_minor=more)
        else:
            script[p] = _special(script[p], "invalid" if poison == "conflict" else poison)
    return plans


def _special(planned: Planned, kind: Kind) -> Planned:
    amount = planned.amount_minor if planned.kind == "withdrawal" else STEP_MINOR
    return replace(
        planned, kind=kind, key=f"{kind}-{planned.account}-{planned.position}", amount_minor=amount
    )


def interleaved(plans: Sequence[Sequence[Planned]]) -> list[Planned]:
    """Round-robin over the accounts: every partition mixes the commands of several."""
    return [script[p] for p in range(len(plans[0])) for script in plans]


def expected_holds(script: Sequence[Planned]) -> dict[str, bool]:
    """Withdrawal key -> whether its hold is taken when the account's commands apply in
    offset order. Deposits never decide (see STEP_MINOR); every taken hold settles (the
    sandbox pays out), which leaves the available balance as the hold left it."""
    available = FUNDS_MINOR
    taken: dict[str, bool] = {}
    for c in script:
        if c.kind in HOLDING_KINDS:
            taken[c.key] = c.amount_minor <= available
            available -= c.amount_minor if taken[c.key] else 0
    return taken


@dataclass(frozen=True)
class Commands:
    """Typed commands of one tenant, as the ingest API would publish them (record key: the
    account), sealed with the stack's key ring."""

    tenant: uuid.UUID
    ring: KeyRing
    registry: SchemaRegistry

    def record(self, planned: Planned) -> KafkaRecord:
        txn = transaction_id(self.tenant, planned.key)
        deposits: tuple[Kind, ...] = ("deposit", "invalid", "unreadable")
        kind = "deposit" if planned.kind in deposits else "withdrawal"
        fields: dict[str, Any] = {
            "transaction_id": txn,
            "tenant_id": self.tenant,
            "idempotency_key": planned.key,
            "account_id": planned.account,
            "country": COUNTRY,
            "amount_minor": planned.amount_minor,
            "currency": CURRENCY,
            "requested_at": datetime.now(UTC),
            "payment_method": "pm_card_visa" if kind == "deposit" else None,
            "metadata": {"test": "refused"} if planned.kind == "refused" else {},
        }
        fields["payload_hash"] = payload_hash(
            {"type": kind, "account_id": planned.account, "amount_minor": planned.amount_minor}
        )
        if kind == "deposit":
            event = RequestDeposit(**fields).to_event(source=SOURCE)
        else:
            sealed = self.ring.seal(self.tenant, txn, json.dumps(DESTINATION).encode())
            destination = SealedDestination(sealed.ciphertext, sealed.key_id, "DE89 **** 3000")
            event = RequestWithdrawal(**fields, destination=destination).to_event(source=SOURCE)
        # Producer bugs: the schema wants label-like metadata keys and a positive amount.
        if planned.kind == "invalid":
            event = replace(event, data={**event.data, "metadata": {"not a label": "x"}})
            return encode(event, self.registry, validate=False)
        if planned.kind == "unreadable":
            event = replace(event, data={**event.data, "amount_minor": 0})
            return encode(event, self.registry, validate=False)
        return encode(event, self.registry)


def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[Planned, KafkaRecord]]
) -> list[Produced]:
    """Produce in this order (idempotent producer: one key's records keep it on their
    partition) and return where each one landed."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    landed: dict[int, tuple[int, int]] = {}
    failed: list[str] = []

    def delivered(index: int) -> Any:
        def report(err: Any, msg: Message) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                landed[index] = (int(msg.partition() or 0), int(msg.offset() or 0))

        return report

    for i, (_, record) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    key=record.key,
                    value=record.value,
                    headers=list[tuple[str, str | bytes | None]](record.headers),
                    on_delivery=delivered(i),
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
    if producer.flush(30) or failed:
        raise KafkaException(f"not every command was produced: {failed[:3]}")
    return [Produced(planned, *landed[i]) for i, (planned, _) in enumerate(records)]


def instrument(database_url: str, flaky_keys: Sequence[str]) -> None:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute(INSTRUMENT)
        for key in flaky_keys:
            conn.execute(sql.SQL("CREATE SEQUENCE {}").format(sql.Identifier(key)))


def stored_rows(database_url: str, accounts: Sequence[str]) -> list[StoredRow]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, account_id, type, status, failure_code, amount_minor,"
            " stored_seq, created_at FROM transactions WHERE account_id = ANY(%s)",
            (list(accounts),),
        ).fetchall()
    return [StoredRow(*row) for row in rows]


def hold_order(database_url: str, accounts: Sequence[str]) -> list[str]:
    """Idempotency keys of the withdrawals whose funds were held, in the order of the holds
    (the `held` leg of a hold is the only positive posting to `held`)."""
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT t.idempotency_key FROM ledger_entries l"
            " JOIN transactions t ON t.id = l.transaction_id"
            " WHERE t.account_id = ANY(%s) AND l.bucket = 'held' AND l.amount_minor > 0"
            " ORDER BY l.id",
            (list(accounts),),
        ).fetchall()
    return [str(row[0]) for row in rows]


def balances(database_url: str, accounts: Sequence[str]) -> dict[str, tuple[int, int]]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT account_id, available_minor, held_minor FROM balances"
            " WHERE account_id = ANY(%s) AND currency = %s",
            (list(accounts), CURRENCY),
        ).fetchall()
    return {str(a): (int(av), int(held)) for a, av, held in rows}


@dataclass(frozen=True)
class Target:
    """A running stack: its database (owner role), broker, topics, demo tenant, key ring."""

    database_url: str
    bootstrap: str
    topic_prefix: str
    tenant: uuid.UUID
    ring: KeyRing
    worker_metrics_url: str


@dataclass(frozen=True)
class Observed:
    """What the worker made of the test's commands, once every one of them is finished."""

    plans: list[list[Planned]]
    produced: list[Produced]
    rows: dict[str, StoredRow]  # by Idempotency-Key
    holds: list[str]  # see hold_order
    balances: dict[str, tuple[int, int]]
    dead: dict[tuple[int, int], list[Received]]  # by the (partition, offset) dead-lettered

    def in_offset_order(self) -> dict[str, list[Produced]]:
        """Each account's records as its partition holds them."""
        accounts: dict[str, list[Produced]] = {script[0].account: [] for script in self.plans}
        for record in sorted(self.produced, key=lambda r: r.offset):
            accounts[record.planned.account].append(record)
        return accounts


def run(target: Target, *, accounts: int, commands: int, seed: int) -> Observed:
    """Fund the accounts, produce their commands interleaved, wait until every one is
    finished (stored and terminal, or dead-lettered) and read back what happened."""
    plans = scripts(accounts, commands, seed=seed)
    instrument(target.database_url, [c.key for s in plans for c in s if c.kind == "flaky"])
    topic = f"{target.topic_prefix}.commands"
    factory = Commands(target.tenant, target.ring, SchemaRegistry())
    names = [script[0].account for script in plans]
    db = target.database_url

    # Funds first, settled before anything else arrives: every hold starts from them.
    funding = [Planned(a, -1, "deposit", f"funds-{a}", FUNDS_MINOR) for a in names]
    produce(target.bootstrap, topic, [(p, factory.record(p)) for p in funding])
    wait_for(
        lambda: balances(db, names) == {a: (FUNDS_MINOR, 0) for a in names},
        timeout=60,
        what="every account funded",
    )
    records = [(p, factory.record(p)) for p in interleaved(plans)]
    # The worker's intake waits on the test's locks while it reads commands up to its limit
    # in flight, so the first batches after the locks go are big, with several commands of
    # many accounts each: order inside one batch is then what decides. (A database this
    # slow for a moment is ordinary too.)
    with balances_locked(db, names):
        produced = produce(target.bootstrap, topic, records)
        wait_for(
            lambda: in_flight(target.worker_metrics_url) >= WORKER_IN_FLIGHT,
            timeout=60,
            what=f"{WORKER_IN_FLIGHT} commands in the worker, waiting on the locks",
        )
    expected = {p.key for p in funding} | {
        r.planned.key for r in produced if r.planned.kind in STORED_KINDS
    }

    def finished() -> list[StoredRow] | None:
        rows = stored_rows(db, names)
        done = expected <= {row.key for row in rows} and all(row.status in TERMINAL for row in rows)
        return rows if done else None

    rows = wait_for(
        finished, timeout=120, interval=0.2, what=f"{len(expected)} finished transactions"
    )
    dead = dead_letters(target, produced)
    return Observed(
        plans,
        produced,
        {row.key: row for row in rows},
        hold_order(db, names),
        balances(db, names),
        dead,
    )


@contextmanager
def balances_locked(database_url: str, accounts: Sequence[str]) -> Iterator[None]:
    """The accounts' balance rows locked: any hold (and credit) on them waits."""
    with psycopg.connect(libpq(database_url)) as conn:
        locked = conn.execute(
            "SELECT 1 FROM balances WHERE account_id = ANY(%s) FOR UPDATE", (list(accounts),)
        ).fetchall()
        assert len(locked) == len(accounts)
        yield
        conn.rollback()


def in_flight(metrics_url: str) -> float:
    """Commands the worker has read and not finished (its `paystream_worker_in_flight`)."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0.0  # its health server is not up yet
    for line in text.splitlines():
        if line.startswith("paystream_worker_in_flight "):
            return float(line.split()[1])
    return 0.0


def dead_letters(
    target: Target, produced: Sequence[Produced]
) -> dict[tuple[int, int], list[Received]]:
    """The dead letters of the test's records, once every poison record has one."""
    topic = f"{target.topic_prefix}.commands".encode()
    ours = {(r.partition, r.offset) for r in produced}
    poisons = {(r.partition, r.offset) for r in produced if r.planned.kind in DEAD_REASONS}

    def source(record: Received) -> tuple[int, int] | None:
        if record.headers.get("dlq_topic") != topic:
            return None
        at = (int(record.headers["dlq_partition"]), int(record.headers["dlq_offset"]))
        return at if at in ours else None

    letters = consume_until(
        target.bootstrap,
        f"{target.topic_prefix}.dead-letters",
        lambda rs: poisons <= {source(r) for r in rs},
    )
    dead: dict[tuple[int, int], list[Received]] = {}
    for letter in letters:
        at = source(letter)
        if at is not None:
            dead.setdefault(at, []).append(letter)
    return dead
