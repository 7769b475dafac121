"""Command intake: decode, store idempotently, hold a withdrawal's funds, route or reject.

One database transaction per tenant in the batch, records in offset order: the first
command stored under an Idempotency-Key wins, a redelivery resumes, and two withdrawals of
one account hold funds one after the other.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from paystream_core.ports import PaymentUnit
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.statuses import Status
from paystream_core.transitions import Transition, transition
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.execution import SOURCE, Plan, candidates_for, plan_attempts
from paystream_gateway_worker.rejections import reject_dead_lettered
from paystream_messaging.cloudevents_codec import InvalidEvent, decode
from paystream_messaging.commands import Command, RequestWithdrawal, command_from_event
from paystream_streams.handling import dead_letter
from paystream_streams.records import RawRecord
from paystream_telemetry.carry import carrying
from paystream_telemetry.messages import MessageSpans

log = logging.getLogger(__name__)

NO_GATEWAY = "no_gateway_available"
INSUFFICIENT_FUNDS = ("insufficient_funds", "available balance is lower than the withdrawal")


class OutOfPlace(Exception):
    """Record `index` of the batch is to be dead-lettered and a later record of the batch
    has the same key (account): stored in this batch, that one would apply before the
    dead letter went out. Raised before the unit at hand commits, so it rolls back."""

    def __init__(self, index: int) -> None:
        super().__init__(f"record {index} of the batch must be dead-lettered in its place")
        self.index = index


@dataclass(frozen=True, slots=True)
class Accepted:
    """The command's transaction is stored; `plan` is its attempt to make now (None: it is
    finished, waits for a callback, or is with the reconciler)."""

    record: RawRecord
    tenant_id: uuid.UUID
    transaction_id: uuid.UUID
    plan: Plan | None = None
    created: bool = False  # stored by this delivery (not a redelivery)


async def intake(deps: WorkerDeps, records: Sequence[RawRecord]) -> list[Accepted]:
    """Store the commands' transactions (or find them again on redelivery) and record
    their first attempts, in one database transaction per tenant; returns what to execute.
    Records that cannot be stored go to the dead-letter topic with the reason, after the
    database transaction committed.

    OutOfPlace when a record to dead-letter is followed in the batch by a record of its
    account: the caller cuts the batch there (those before it, then it alone, then the
    rest), so the account's commands apply in offset order with the dead letter in its
    place. It costs a unit or two more only when a poison record shares a batch with its
    account."""
    spans: MessageSpans[uuid.UUID] = MessageSpans("intake command", len(records))
    try:
        accepted, dead = await _intake(deps, records, spans)
    except BaseException as exc:
        spans.fail(exc)
        raise
    traces = spans.traceparents()
    if traces:  # the attempts go on in the command's trace
        accepted = [_traced(a, traces) for a in accepted]
    if spans.recording:
        outcomes = {a.transaction_id: "accepted" for a in accepted}
        spans.end(outcomes, attribute="paystream.intake.outcome", otherwise="rejected")
    # Only once every unit committed: a batch retried after a failure would send them again.
    # The rejection first: a crash between the two then finds it stored and does not
    # store it twice (the dead letter may be sent twice: at least once, like any record).
    for record, problem in dead:
        await reject_dead_lettered(deps, record, problem)
        await _dead_letter(deps, record, problem)
    return accepted


async def _intake(
    deps: WorkerDeps, records: Sequence[RawRecord], spans: MessageSpans[uuid.UUID]
) -> tuple[list[Accepted], list[tuple[RawRecord, str]]]:
    by_tenant: dict[uuid.UUID, list[tuple[RawRecord, Command]]] = {}
    invalid: list[tuple[RawRecord, str]] = []
    for record in records:
        try:
            event = decode(record.key, record.value, record.headers, deps.registry)
            command = command_from_event(event)
        except InvalidEvent as exc:
            invalid.append((record, f"invalid_event: {exc.reason}"))
            continue
        by_tenant.setdefault(command.tenant_id, []).append((record, command))
        spans.add(
            command.transaction_id,
            event.traceparent,
            {
                "paystream.tenant_id": command.tenant_id,
                "paystream.transaction_id": command.transaction_id,
                "messaging.kafka.offset": record.offset,
            },
        )
    _in_place(records, invalid)
    accepted: list[Accepted] = []
    dead = invalid
    for tenant_id, commands in by_tenant.items():
        # The outcome events this unit writes keep their command's trace (the outbox row's
        # traceparent), so the relay's publish joins it.
        with carrying(spans.traceparents()):
            async with deps.store.unit(tenant_id) as unit:
                if await unit.tenant_exists():
                    stored, problems, held = await _store(deps, unit, tenant_id, commands)
                    ids = [a.transaction_id for a in stored]
                    # Transactions created by this unit have no attempt yet: nothing to read.
                    fresh: dict[uuid.UUID, list[AttemptRecord]] = {
                        a.transaction_id: [] for a in stored if a.created
                    }
                    planned = await plan_attempts(deps, unit, ids, known=held, known_attempts=fresh)
                    plans = {p.transaction_id: p for p in planned}
                    stored = [
                        dataclasses.replace(a, plan=plans.get(a.transaction_id)) for a in stored
                    ]
                else:
                    stored = []
                    problems = [(r, f"unknown_tenant: no tenant {tenant_id}") for r, _ in commands]
                _in_place(records, problems)  # raised inside the unit: it rolls back
        accepted.extend(stored)
        dead.extend(problems)
    return accepted, dead


def _traced(accepted: Accepted, traces: Mapping[uuid.UUID, str]) -> Accepted:
    if accepted.plan is None:
        return accepted
    plan = dataclasses.replace(accepted.plan, trace=traces.get(accepted.transaction_id))
    return dataclasses.replace(accepted, plan=plan)


def _in_place(records: Sequence[RawRecord], dead: Sequence[tuple[RawRecord, str]]) -> None:
    """OutOfPlace for the first record to dead-letter that a later record of its key
    follows in this batch (its dead letter would go out after that one applied)."""
    if not dead or len(records) < 2:
        return
    index = {id(r): i for i, r in enumerate(records)}
    cuts = [
        index[id(r)]
        for r, _ in dead
        if any(later.key == r.key for later in records[index[id(r)] + 1 :])
    ]
    if cuts:
        raise OutOfPlace(min(cuts))


async def _store(
    deps: WorkerDeps,
    unit: PaymentUnit,
    tenant_id: uuid.UUID,
    commands: Sequence[tuple[RawRecord, Command]],
) -> tuple[list[Accepted], list[tuple[RawRecord, str]], dict[uuid.UUID, TransactionRecord]]:
    """Returns what was accepted, what must be dead-lettered, and every accepted
    transaction as this unit now holds it (locked); `Accepted.created` marks those this
    unit created."""
    first: dict[uuid.UUID, tuple[RawRecord, Command]] = {}
    copies: list[tuple[RawRecord, Command]] = []
    for record, command in commands:
        if command.transaction_id in first:
            copies.append((record, command))
        else:
            first[command.transaction_id] = (record, command)
    # Insert first: a new command (the usual case) then costs no read. Those that existed
    # (a redelivery, or another body under the same key) are read and locked after.
    await unit.add_accounts([(c.account_id, c.country) for _, c in first.values()])
    rows = [_received(c) for _, c in first.values()]
    inserted = await unit.add_transactions(rows)
    stored = await unit.lock_transactions([i for i in first if i not in inserted])
    bound = {
        i: (stored[i].payload_hash if i in stored else c.payload_hash)
        for i, (_, c) in first.items()
    }
    accepted: list[Accepted] = []
    problems: list[tuple[RawRecord, str]] = []
    for txn_id, (record, command) in first.items():
        if txn_id in inserted:
            continue
        if bound[txn_id] != command.payload_hash:
            # Same tenant + key, other body: the stored transaction is untouched.
            problems.append((record, _conflict(command)))
        else:
            accepted.append(Accepted(record, tenant_id, txn_id))  # a redelivery: resume
    for record, command in copies:  # the same key twice in one batch: the first one carries it
        if bound[command.transaction_id] != command.payload_hash:
            problems.append((record, _conflict(command)))
    new = [t for t in rows if t.id in inserted]
    taken, after = await _accept_or_reject(deps, unit, new, first)
    created = [dataclasses.replace(a, created=True) for a in taken]
    return accepted + created, problems, {**stored, **after}


def _conflict(command: Command) -> str:
    return (
        f"idempotency_conflict: key {command.idempotency_key!r} already names"
        f" transaction {command.transaction_id} with another payload"
    )


def _received(command: Command) -> TransactionRecord:
    destination = command.destination if isinstance(command, RequestWithdrawal) else None
    return TransactionRecord(
        id=command.transaction_id,
        tenant_id=command.tenant_id,
        account_id=command.account_id,
        type=command.KIND,
        status=Status.RECEIVED,
        version=1,
        amount_minor=command.amount_minor,
        currency=command.currency,
        country=command.country,
        idempotency_key=command.idempotency_key,
        payload_hash=command.payload_hash,
        payment_method=command.payment_method,
        metadata=dict(command.metadata),
        destination_ciphertext=destination.ciphertext if destination else None,
        destination_key_id=destination.key_id if destination else None,
        destination_masked=destination.masked if destination else None,
    )


async def _accept_or_reject(
    deps: WorkerDeps,
    unit: PaymentUnit,
    rows: Sequence[TransactionRecord],
    new: dict[uuid.UUID, tuple[RawRecord, Command]],
) -> tuple[list[Accepted], dict[uuid.UUID, TransactionRecord]]:
    """Route each new transaction: no gateway -> rejected; otherwise processing, which for a
    withdrawal holds its amount (refused holds -> rejected for insufficient funds)."""
    now = datetime.now(UTC)
    moves: list[Transition] = []
    rejected: dict[uuid.UUID, str] = {}
    for txn in rows:
        if await candidates_for(unit, txn):  # the routes are cached (storage config cache)
            move = transition(txn, Status.PROCESSING, at=now)
        else:
            detail = f"no enabled gateway for {txn.type} in {txn.country} ({txn.currency})"
            move = transition(txn, Status.REJECTED, at=now, failure=(NO_GATEWAY, detail))
            rejected[txn.id] = NO_GATEWAY
        assert move is not None  # received -> processing | rejected is always allowed
        moves.append(move)
    if not rows:
        return [], {}
    refused = await unit.apply(moves, source=SOURCE)
    after = {m.after.id: m.after for m in moves if m.after.id not in refused}
    if refused:
        by_id = {t.id: t for t in rows}
        rejections = []
        for txn_id in refused:
            move = transition(by_id[txn_id], Status.REJECTED, at=now, failure=INSUFFICIENT_FUNDS)
            assert move is not None
            rejections.append(move)
            after[txn_id] = move.after
            rejected[txn_id] = INSUFFICIENT_FUNDS[0]
        await unit.apply(rejections, source=SOURCE)
    accepted = []
    for txn in rows:
        code = rejected.get(txn.id)
        if code is None:
            deps.metrics.commands.labels("accepted").inc()
            accepted.append(Accepted(new[txn.id][0], txn.tenant_id, txn.id))
        else:
            deps.metrics.commands.labels(f"rejected_{code}").inc()
            log.info("transaction %s rejected: %s", txn.id, code)
    return accepted, after


async def _dead_letter(deps: WorkerDeps, record: RawRecord, reason: str) -> None:
    await dead_letter(deps.dead_letters, record, reason, deps.count_dead)
