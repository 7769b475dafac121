"""Executing a stored transaction: gateways in priority order, safe fallback (design §3).

Every step is resumable from the database: a redelivered command after a crash finds the
last attempt and carries on. An attempt that was `started` may have reached the provider,
so it is retried with the same idempotency key (the provider answers with what it did)
before anything else happens. No DB transaction is open while a provider is called.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_core.ids import attempt_idempotency_key
from paystream_core.statuses import Status, TransactionType
from paystream_gateway_worker import routing
from paystream_gateway_worker.commands import SOURCE, destination_of
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.resilience import call_with_resilience
from paystream_gateways.errors import Ambiguous, GatewayError, NotExecuted
from paystream_gateways.protocol import (
    ActionRequired,
    Declined,
    Gateway,
    NotFound,
    Outcome,
    PaymentRequest,
    Pending,
    StatusQuery,
    Succeeded,
)
from paystream_storage.db import tenant_session
from paystream_storage.models import Attempt, Transaction
from paystream_storage.transitions import lock_transaction, move

log = logging.getLogger(__name__)

_CODE = re.compile(r"[^a-z0-9_.]+")


@dataclass(frozen=True, slots=True)
class _Plan:
    """The attempt to make now (a new one or the unfinished one to redo) and its request."""

    seq: int
    gateway: str
    connection_id: uuid.UUID
    new: bool
    request: PaymentRequest
    kind: TransactionType


@dataclass(frozen=True, slots=True)
class _Skip:
    """This attempt provably did not execute: record why and try the next gateway."""

    status: str
    error_class: str
    code: str
    message: str


def failure_code(raw: str) -> str:
    """Provider codes made safe for the outcome schema (^[a-z0-9_.]{1,64}$)."""
    return (_CODE.sub("_", raw.lower()).strip("_") or "unknown")[:64]


async def execute(deps: WorkerDeps, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> None:
    """Drive the transaction until it leaves `processing` (or is not in it)."""
    while True:
        plan = await _next_plan(deps, tenant_id, txn_id)
        if plan is None:
            return
        result = await _call(deps, tenant_id, txn_id, plan)
        if isinstance(result, _Skip):
            await _finish_attempt(deps, tenant_id, txn_id, plan, result)
            continue
        await _conclude(deps, tenant_id, txn_id, plan, result)
        return


async def _next_plan(deps: WorkerDeps, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> _Plan | None:
    for _ in range(3):
        try:
            return await _plan_once(deps, tenant_id, txn_id)
        except IntegrityError:
            # Another worker (a redelivery racing this one) recorded the attempt: read it.
            continue
    return await _plan_once(deps, tenant_id, txn_id)


async def _plan_once(deps: WorkerDeps, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> _Plan | None:
    async with tenant_session(deps.sessions, tenant_id) as session:
        txn = await lock_transaction(session, txn_id)
        if txn is None or txn.status != Status.PROCESSING:
            return None  # finished, waiting for a callback, or with the reconciler
        attempts = list(
            (
                await session.execute(
                    select(Attempt).where(Attempt.transaction_id == txn_id).order_by(Attempt.seq)
                )
            ).scalars()
        )
        if attempts and attempts[-1].status == "started":
            last = attempts[-1]
            return _plan(deps, txn, last.seq, last.gateway_code, last.connection_id, new=False)
        tried = {a.gateway_code for a in attempts}
        routes = await routing.candidates(
            session,
            tenant_id=tenant_id,
            country=txn.country,
            kind=txn.type,
            currency=txn.currency,
            amount_minor=txn.amount_minor,
        )
        remaining = [r for r in routes if r.gateway not in tried]
        if not remaining:
            reasons = (
                "; ".join(f"{a.gateway_code}: {a.error_code or a.status}" for a in attempts)
                or "no gateway left to try"
            )
            await move(session, deps.registry, txn, Status.FAILED, source=SOURCE,
                       failure=("all_gateways_failed", reasons))  # fmt: skip
            deps.metrics.commands.labels("failed_all_gateways").inc()
            return None
        route = remaining[0]
        seq = len(attempts) + 1
        session.add(
            Attempt(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                transaction_id=txn_id,
                seq=seq,
                gateway_code=route.gateway,
                connection_id=route.connection_id,
                idempotency_key=attempt_idempotency_key(txn_id, seq),
                status="started",
            )
        )
        await session.flush()  # IntegrityError if a racing worker recorded this seq first
        return _plan(deps, txn, seq, route.gateway, route.connection_id, new=True)


def _plan(
    deps: WorkerDeps, txn: Transaction, seq: int, gateway: str, connection: uuid.UUID, *, new: bool
) -> _Plan:
    request = PaymentRequest.for_attempt(
        txn.id,
        seq,
        account_id=txn.account_id,
        amount_minor=txn.amount_minor,
        currency=txn.currency,
        country=txn.country,
        payment_method=txn.payment_method,
        destination=destination_of(deps, txn),
        metadata=txn.metadata_,
        tenant_id=txn.tenant_id,
    )
    return _Plan(seq, gateway, connection, new, request, TransactionType(txn.type))


async def _call(
    deps: WorkerDeps, tenant_id: uuid.UUID, txn_id: uuid.UUID, plan: _Plan
) -> Outcome | _Skip | Ambiguous:
    request, kind = plan.request, plan.kind
    gateway = await deps.gateways.get(tenant_id, plan.connection_id)
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
        return _Skip("not_executed", "not_executed", failure_code(str(exc.reason)), exc.message)
    except Ambiguous as exc:
        deps.metrics.attempts.labels(plan.gateway, "ambiguous").inc()
        resolved = await _look_up(deps, gateway, kind, request, plan, exc)
        return resolved
    finally:
        deps.metrics.call_seconds.labels(plan.gateway).observe(time.monotonic() - started)
        deps.metrics.breaker_open.labels(plan.gateway).set(
            1 if str(breaker.current_state) == "open" else 0
        )
    deps.metrics.attempts.labels(plan.gateway, type(outcome).__name__.lower()).inc()
    if isinstance(outcome, Declined) and outcome.retry_elsewhere:
        return _Skip("declined", "declined", failure_code(outcome.code), outcome.message)
    return outcome


async def _look_up(
    deps: WorkerDeps,
    gateway: Gateway,
    kind: TransactionType,
    request: PaymentRequest,
    plan: _Plan,
    error: Ambiguous,
) -> Outcome | _Skip | Ambiguous:
    """After retries stayed ambiguous: ask the provider what it did with our key."""
    status = gateway.status
    try:
        found = await status(StatusQuery(kind=kind, idempotency_key=request.idempotency_key))
    except GatewayError as exc:
        log.warning("status lookup for %s failed: %s", request.idempotency_key, exc)
        return error
    if isinstance(found, NotFound):
        if found.conclusive:
            detail = f"ambiguous ({error.reason}), then proven absent at {plan.gateway}"
            return _Skip("not_executed", "not_executed", "absent_at_provider", detail)
        return error
    return found


async def _finish_attempt(
    deps: WorkerDeps, tenant_id: uuid.UUID, txn_id: uuid.UUID, plan: _Plan, skip: _Skip
) -> None:
    async with tenant_session(deps.sessions, tenant_id) as session:
        attempt = await _attempt(session, txn_id, plan.seq)
        if attempt.status == "started":
            attempt.status = skip.status
            attempt.error_class = skip.error_class
            attempt.error_code = skip.code
            attempt.error_message = skip.message[:2000]
            attempt.finished_at = datetime.now(UTC)
    log.info("transaction %s attempt %d at %s: %s (%s), trying the next gateway",
             txn_id, plan.seq, plan.gateway, skip.status, skip.code)  # fmt: skip


async def _conclude(
    deps: WorkerDeps,
    tenant_id: uuid.UUID,
    txn_id: uuid.UUID,
    plan: _Plan,
    result: Outcome | Ambiguous,
) -> None:
    async with tenant_session(deps.sessions, tenant_id) as session:
        txn = await lock_transaction(session, txn_id)
        attempt = await _attempt(session, txn_id, plan.seq)
        assert txn is not None
        now = datetime.now(UTC)
        reference = getattr(result, "provider_reference", None)
        attempt.finished_at = now
        attempt.provider_reference = reference

        async def to(
            status: Status, failure: tuple[str, str] | None = None, url: str | None = None
        ) -> bool:
            assert txn is not None
            return await move(session, deps.registry, txn, status, source=SOURCE,
                              gateway=plan.gateway, provider_reference=reference,
                              failure=failure, redirect_url=url)  # fmt: skip

        match result:
            case Succeeded():
                attempt.status = "succeeded"
                moved = await to(Status.SUCCEEDED)
            case Pending():
                attempt.status = "pending"
                moved = await to(Status.PENDING)
            case ActionRequired(redirect_url=url):
                attempt.status = "action_required"
                moved = await to(Status.ACTION_REQUIRED, url=url)
            case Declined(code=code, message=message):
                attempt.status = "declined"
                attempt.error_class, attempt.error_code = "declined", failure_code(code)
                attempt.error_message = message[:2000]
                moved = await to(Status.FAILED, failure=(failure_code(code), message))
            case Ambiguous():
                attempt.status = "ambiguous"
                attempt.error_class, attempt.error_code = "ambiguous", failure_code(result.reason)
                attempt.error_message = result.message[:2000]
                moved = await to(Status.UNKNOWN)
        deps.metrics.commands.labels(txn.status).inc()
    if not moved:
        log.info("transaction %s already moved on (%s); result of attempt %d kept on the attempt",
                 txn_id, txn.status, plan.seq)  # fmt: skip


async def _attempt(session: AsyncSession, txn_id: uuid.UUID, seq: int) -> Attempt:
    result = await session.execute(
        select(Attempt)
        .where(Attempt.transaction_id == txn_id, Attempt.seq == seq)
        .with_for_update()
    )
    attempt: Attempt = result.scalar_one()
    return attempt
