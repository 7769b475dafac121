"""Executing stored transactions: gateways in priority order, safe fallback (design §3).

Rounds of plan -> call -> conclude, each a batch: plan records the attempts (committed
before any provider is called), the calls run concurrently with no database transaction
open, conclude writes every answer in one database transaction per tenant. A transaction
whose attempt provably did not execute goes round again with the next gateway.

Routing: the eligible gateways by priority, ranked by recent health and weights
(`paystream_core.ranking` through the process's `RoutingState`); each new attempt records
why its gateway was chosen (`route_reason`). A redo keeps the attempt's gateway and reason.

Every step is resumable from the database: a redelivered command after a crash finds the
last attempt and carries on. An attempt that was `started` may have reached the provider,
so it is made again with the same idempotency key (the provider answers with what it did).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paystream_core.attempts import (
    Blocked,
    Conclude,
    Exhausted,
    FallBack,
    NewAttempt,
    Redo,
    after_lookup,
    next_step,
    redone,
    verdict,
)
from paystream_core.outcomes import AmbiguousCall, CallResult, NotExecutedCall
from paystream_core.ports import AnomalyRecord, PaymentUnit
from paystream_core.ranking import Ranked
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.routing import Candidate, candidates
from paystream_core.statuses import OPEN_ATTEMPT, AttemptStatus, Status, TransactionType
from paystream_core.transitions import Transition, transition
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateways.errors import Ambiguous, GatewayError, NotExecuted
from paystream_gateways.protocol import Gateway, PaymentRequest, StatusQuery, StatusResult
from paystream_gateways.resilience import call_with_resilience
from paystream_keyring import Sealed
from paystream_telemetry.carry import carrying
from paystream_telemetry.logs import log_context
from paystream_telemetry.tracing import span, tracing_on

log = logging.getLogger(__name__)

SOURCE = "/paystream/gateway-worker"  # CloudEvent source of the outcome events
ANOMALY_SOURCE = "worker"  # anomalies.source: callback | reconciler | worker
# How often a round may find its attempt taken by a racing worker before giving up on the
# transaction for this delivery (the racing worker carries it).
_MAX_RACES = 3


@dataclass(frozen=True, slots=True)
class Work:
    tenant_id: uuid.UUID
    transaction_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Plan:
    """The attempt to make now (a new one or the unfinished one to redo) and its request."""

    tenant_id: uuid.UUID
    transaction_id: uuid.UUID
    seq: int
    gateway: str
    connection_id: uuid.UUID
    request: PaymentRequest
    kind: TransactionType
    redo: bool = False  # the attempt was started before (a crash, a redelivery)
    # The W3C traceparent of the command's intake (or the one it came with): the attempt's
    # span is its child, the outcome events carry it. None: not traced.
    trace: str | None = None


async def execute(deps: WorkerDeps, work: Sequence[Work]) -> None:
    """Drive the transactions until none is left in `processing` with a gateway to try."""
    plans: list[Plan] = []
    for tenant_id, items in _by_tenant(list(dict.fromkeys(work))).items():
        async with deps.store.unit(tenant_id) as unit:
            plans += await plan_attempts(deps, unit, [w.transaction_id for w in items])
    await run(deps, plans)


async def run(deps: WorkerDeps, plans: Sequence[Plan]) -> None:
    """Call, conclude and plan the next attempt, until no transaction has one to make."""
    pending = list(plans)
    while pending:
        results = await asyncio.gather(*(_call(deps, p) for p in pending))
        pending = await _conclude(deps, list(zip(pending, results, strict=True)))


def _by_tenant(items: Sequence[Any]) -> dict[uuid.UUID, list[Any]]:
    grouped: dict[uuid.UUID, list[Any]] = {}
    for item in items:
        grouped.setdefault(item.tenant_id, []).append(item)
    return grouped


# --- plan ------------------------------------------------------------------------------------


async def plan_attempts(
    deps: WorkerDeps,
    unit: PaymentUnit,
    txn_ids: Sequence[uuid.UUID],
    *,
    known: Mapping[uuid.UUID, TransactionRecord] | None = None,
    known_attempts: Mapping[uuid.UUID, list[AttemptRecord]] | None = None,
) -> list[Plan]:
    """Record (and commit with `unit`) the next attempt of each transaction, or find the
    unfinished one to redo; fail those with no gateway left. Returns what to call.

    `known`: transactions this unit already holds locked, as they are now; `known_attempts`:
    their attempts as they are now (a transaction created in this unit has none, so no
    other worker can race for its first attempt). Nothing is read twice."""
    known = known or {}
    known_attempts = known_attempts or {}
    unknown = [i for i in txn_ids if i not in known]
    txns = {**known, **(await unit.lock_transactions(unknown) if unknown else {})}
    deps.routing.refresh_soon(deps.store)  # in the background: nothing here waits for it
    plans: list[Plan] = []
    failures: list[Transition] = []
    redos: list[uuid.UUID] = []
    todo = [txns[i] for i in txn_ids if i in txns]
    fresh = {t.id for t in todo if known_attempts.get(t.id) == []}
    for _ in range(_MAX_RACES):
        if not todo:
            break
        unread = [t.id for t in todo if t.id not in known_attempts]
        attempts = {**known_attempts, **(await unit.attempts(unread) if unread else {})}
        known_attempts = {}  # a second round reads what a racing worker recorded
        new: list[tuple[TransactionRecord, AttemptRecord, list[Ranked]]] = []
        for txn in todo:
            eligible = await candidates_for(unit, txn)
            # From here to `chose`, no await: the draw ranked with is the one consumed.
            ranked = deps.routing.rank(txn, eligible)
            step = next_step(txn, attempts[txn.id], [r.candidate for r in ranked])
            match step:
                case None:
                    continue  # finished, waiting for a callback, or with the reconciler
                case Redo(attempt=attempt):
                    redos.append(attempt.id)
                    plans.append(
                        _plan_of(
                            deps,
                            txn,
                            attempt.seq,
                            attempt.gateway_code,
                            attempt.connection_id,
                            redo=True,
                        )
                    )
                case NewAttempt(seq=seq, candidate=candidate, idempotency_key=key):
                    # Counted once stored: an attempt a racing worker recorded first was
                    # no decision of ours.
                    reason = deps.routing.chose(txn, ranked, candidate.gateway, count=False)
                    record = AttemptRecord(
                        id=uuid.uuid4(),
                        tenant_id=txn.tenant_id,
                        transaction_id=txn.id,
                        seq=seq,
                        gateway_code=candidate.gateway,
                        connection_id=candidate.connection_id,
                        idempotency_key=key,
                        status=AttemptStatus.STARTED,
                        route_reason=reason,
                    )
                    new.append((txn, record, ranked))
                case Exhausted(code=code, message=message):
                    move = transition(
                        txn, Status.FAILED, at=datetime.now(UTC), failure=(code, message)
                    )
                    assert move is not None  # processing -> failed
                    failures.append(move)
                    deps.metrics.commands.labels("failed_all_gateways").inc()
                case Blocked(reason=reason):
                    log.error("transaction %s cannot go on: %s", txn.id, reason)
        contested = any(txn.id not in fresh for txn, _, _ in new)
        inserted = await unit.add_attempts([record for _, record, _ in new], contested=contested)
        todo = []
        for txn, record, ranked in new:
            if record.id in inserted:
                deps.routing.recorded(ranked, record.gateway_code)
                plans.append(
                    _plan_of(deps, txn, record.seq, record.gateway_code, record.connection_id)
                )
            else:
                todo.append(txn)  # a racing worker recorded this seq first: read it again
    # A redo is a call in flight again: its attempt must not look abandoned to the
    # reconciler (which takes a `started` attempt older than its age for one a dead worker
    # left, and may queue it again or let the next gateway be tried: two executions).
    # Committed with this unit, before the call.
    await unit.restart_attempts(redos)
    if failures:
        await unit.apply(failures, source=SOURCE)
    return plans


async def candidates_for(unit: PaymentUnit, txn: TransactionRecord) -> list[Candidate]:
    """The gateways that may take `txn`, by priority (`paystream_core.routing`); the plan
    then ranks them by health and weight (`RoutingState.rank`)."""
    routes, connections = await unit.routing(txn.country, txn.type)
    return candidates(
        routes,
        connections,
        country=txn.country,
        kind=txn.type,
        currency=txn.currency,
        amount_minor=txn.amount_minor,
    )


def _plan_of(
    deps: WorkerDeps,
    txn: TransactionRecord,
    seq: int,
    gateway: str,
    connection: uuid.UUID,
    *,
    redo: bool = False,
) -> Plan:
    request = PaymentRequest.for_attempt(
        txn.id,
        seq,
        account_id=txn.account_id,
        amount_minor=txn.amount_minor,
        currency=txn.currency,
        country=txn.country,
        payment_method=txn.payment_method,
        destination=_destination(deps, txn),
        metadata=txn.metadata,
        tenant_id=txn.tenant_id,
    )
    return Plan(txn.tenant_id, txn.id, seq, gateway, connection, request, txn.type, redo)


def _destination(deps: WorkerDeps, txn: TransactionRecord) -> dict[str, Any] | None:
    """The cleartext bank details of a withdrawal, for the provider call only."""
    if txn.destination_ciphertext is None or txn.destination_key_id is None:
        return None
    sealed = Sealed(txn.destination_key_id, txn.destination_ciphertext)
    value: dict[str, Any] = json.loads(deps.keyring.open(txn.tenant_id, txn.id, sealed))
    return value


# --- call ------------------------------------------------------------------------------------


# The span attribute of an attempt's answer: what kind of answer, never its content.
_OUTCOME_CLASS = {
    "Succeeded": "succeeded",
    "Pending": "pending",
    "ActionRequired": "action_required",
    "Declined": "declined",
    "NotExecutedCall": "not_executed",
    "AmbiguousCall": "ambiguous",
}


async def _call(deps: WorkerDeps, plan: Plan) -> CallResult:
    """One provider attempt, in its own span (a child of the command's intake) and with
    its transaction named in the log lines.

    Never raises for a bug or an error nobody classified (in an adapter, the breaker, a
    lookup): such a call may have executed, so it is ambiguous and its transaction goes to
    the reconciler as `unknown`. Raising instead would fail the batch's `gather` while the
    other calls are still in flight, and the batch's one-by-one retry would then redo those
    attempts concurrently with themselves."""
    try:
        return await _traced_call(deps, plan)
    except Exception as exc:
        log.exception(
            "attempt %d of transaction %s at %s failed unexpectedly; it may have executed",
            plan.seq,
            plan.transaction_id,
            plan.gateway,
        )
        deps.metrics.attempts.labels(plan.gateway, "internal_error").inc()
        return AmbiguousCall("internal_error", f"{type(exc).__name__}: {exc}")


async def _traced_call(deps: WorkerDeps, plan: Plan) -> CallResult:
    with log_context(
        tenant=plan.tenant_id, transaction=plan.transaction_id, traceparent=plan.trace
    ):
        if not tracing_on():
            return await _answer(deps, plan)
        attributes = {
            "paystream.gateway": plan.gateway,
            "paystream.attempt": plan.seq,
            "paystream.transaction_id": str(plan.transaction_id),
            "paystream.tenant_id": str(plan.tenant_id),
            "paystream.redo": plan.redo,
        }
        with span(f"attempt {plan.gateway}", parent=plan.trace, attributes=attributes) as attempt:
            result = await _answer(deps, plan)
            if attempt is not None:
                outcome_class = _OUTCOME_CLASS.get(type(result).__name__, type(result).__name__)
                attempt.set_attribute("paystream.outcome_class", outcome_class)
            return result


async def _answer(deps: WorkerDeps, plan: Plan) -> CallResult:
    """The provider's answer as a value: an outcome, or a failure that says whether the
    call may have executed. No database transaction is open here."""
    request, kind = plan.request, plan.kind
    gateway = await deps.gateways.get(plan.tenant_id, plan.connection_id)
    breaker = deps.breakers.of(plan.gateway)
    operation = gateway.deposit if kind == TransactionType.DEPOSIT else gateway.withdraw
    started = time.monotonic()
    try:
        outcome = await call_with_resilience(
            breaker,
            lambda: operation(request),
            attempts=deps.settings.worker_retry_attempts,
            base_s=deps.settings.worker_retry_base_s,
            max_s=deps.settings.worker_retry_max_s,
            gateway=plan.gateway,
        )
    except NotExecuted as exc:
        deps.metrics.attempts.labels(plan.gateway, f"not_executed_{exc.reason}").inc()
        refused = NotExecutedCall(str(exc.reason), exc.message)
        unsure = redone(refused) if plan.redo else refused
        if not isinstance(unsure, AmbiguousCall):
            return unsure
        found = await _look_up(gateway, kind, request)
        return after_lookup(unsure, found, plan.gateway)
    except Ambiguous as exc:
        deps.metrics.attempts.labels(plan.gateway, "ambiguous").inc()
        found = await _look_up(gateway, kind, request)
        return after_lookup(AmbiguousCall(str(exc.reason), exc.message), found, plan.gateway)
    finally:
        deps.metrics.call_seconds.labels(plan.gateway).observe(time.monotonic() - started)
        deps.metrics.breaker_open.labels(plan.gateway).set(
            1 if str(breaker.current_state) == "open" else 0
        )
    deps.metrics.attempts.labels(plan.gateway, type(outcome).__name__.lower()).inc()
    return outcome


async def _look_up(
    gateway: Gateway, kind: TransactionType, request: PaymentRequest
) -> StatusResult | None:
    """After retries stayed ambiguous: ask the provider what it did with our key."""
    try:
        return await gateway.status(StatusQuery(kind=kind, idempotency_key=request.idempotency_key))
    except GatewayError as exc:
        log.warning("status lookup for %s failed: %s", request.idempotency_key, exc)
        return None


# --- conclude --------------------------------------------------------------------------------


async def _conclude(deps: WorkerDeps, answered: list[tuple[Plan, CallResult]]) -> list[Plan]:
    """Write every answer and, in the same database transaction, record the next attempt
    of each transaction that falls back; returns those attempts to make."""
    again: list[Plan] = []
    traces = {p.transaction_id: p.trace for p, _ in answered if p.trace is not None}
    for tenant_id, items in _by_tenant([p for p, _ in answered]).items():
        results = {p.transaction_id: r for p, r in answered if p.tenant_id == tenant_id}
        # The outcome events keep their command's trace (see intake).
        with carrying(traces):
            async with deps.store.unit(tenant_id) as unit:
                fall_back, txns, attempts = await _conclude_tenant(deps, unit, items, results)
                again += await plan_attempts(
                    deps,
                    unit,
                    fall_back,
                    known={i: txns[i] for i in fall_back},
                    known_attempts={i: attempts[i] for i in fall_back},
                )
    if traces:  # the next gateway's attempt stays in the command's trace
        again = [dataclasses.replace(p, trace=traces.get(p.transaction_id)) for p in again]
    return again


async def _conclude_tenant(
    deps: WorkerDeps,
    unit: PaymentUnit,
    plans: Sequence[Plan],
    results: dict[uuid.UUID, CallResult],
) -> tuple[
    list[uuid.UUID],
    dict[uuid.UUID, TransactionRecord],
    dict[uuid.UUID, list[AttemptRecord]],
]:
    """Returns the transactions to try on the next gateway, with every transaction and
    attempt as this unit now holds them (locked)."""
    ids = [p.transaction_id for p in plans]
    txns, attempts = await unit.lock_with_attempts(ids)
    now = datetime.now(UTC)
    again: list[uuid.UUID] = []
    saved: list[AttemptRecord] = []
    moves: list[Transition] = []
    anomalies: list[AnomalyRecord] = []
    for plan in plans:
        txn = txns[plan.transaction_id]
        attempt = next(a for a in attempts[txn.id] if a.seq == plan.seq)
        decided = verdict(results[txn.id])
        result = decided.attempt
        # A callback may have settled the attempt while we waited for the answer: what it
        # recorded stands (reports settle attempts forward only). A fallback only ever
        # finishes an attempt that is still just started.
        settles = OPEN_ATTEMPT if isinstance(decided, Conclude) else {AttemptStatus.STARTED}
        if attempt.status in settles:
            finished = dataclasses.replace(
                attempt,
                status=result.status,
                provider_reference=result.provider_reference or attempt.provider_reference,
                error_class=result.error_class,
                error_code=result.error_code,
                error_message=result.error_message,
                finished_at=now,
            )
            saved.append(finished)
            attempts[txn.id] = [finished if a.id == attempt.id else a for a in attempts[txn.id]]
        if isinstance(decided, FallBack):
            log.info(
                "transaction %s attempt %d at %s: %s (%s), trying the next gateway",
                txn.id,
                plan.seq,
                plan.gateway,
                result.status,
                result.error_code,
            )
            again.append(txn.id)
            continue
        assert isinstance(decided, Conclude)
        move = transition(
            txn,
            decided.status,
            at=now,
            gateway=plan.gateway,
            provider_reference=decided.provider_reference,
            failure=decided.failure,
            redirect_url=decided.redirect_url,
        )
        if move is None:
            deps.metrics.commands.labels(txn.status.value).inc()
            if txn.status.terminal and decided.status.terminal and txn.status != decided.status:
                # A callback finished the transaction while we waited, and the provider's
                # own answer now says otherwise: money may have moved against our books.
                anomalies.append(_contradiction(deps, txn, plan, decided.status))
                continue
            log.info(
                "transaction %s already moved on (%s); result of attempt %d kept on the attempt",
                txn.id,
                txn.status,
                plan.seq,
            )
            continue
        moves.append(move)
        deps.metrics.commands.labels(move.after.status.value).inc()
    await unit.save_attempts(saved)
    await unit.apply(moves, source=SOURCE)
    await unit.add_anomalies(anomalies)
    return again, txns, attempts


def _contradiction(
    deps: WorkerDeps, txn: TransactionRecord, plan: Plan, answered: Status
) -> AnomalyRecord:
    detail = (
        f"transaction is {txn.status.value}, the provider answered attempt {plan.seq} at"
        f" {plan.gateway} with {answered.value}"
    )
    deps.metrics.anomalies.labels(ANOMALY_SOURCE, "contradiction").inc()
    log.error("ANOMALY contradiction from %s: transaction %s: %s", ANOMALY_SOURCE, txn.id, detail)
    return AnomalyRecord(
        tenant_id=txn.tenant_id,
        source=ANOMALY_SOURCE,
        kind="contradiction",
        detail=detail,
        transaction_id=txn.id,
        connection_id=plan.connection_id,
        transaction_status=txn.status.value,
        reported_status=answered.value,
    )
