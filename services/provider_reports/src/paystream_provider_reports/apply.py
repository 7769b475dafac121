"""A provider's word on one attempt, applied to its transaction (callbacks and lookups).

Same code path as the gateway worker: `transitions.move` (forward-only state machine,
ledger postings, outcome event through the outbox) in the caller's DB transaction, with
the transaction row locked. What the state machine refuses is sorted into "stale" (an
older report arriving late: expected, ignored) and an anomaly (a report that contradicts
a final status, or concerns an attempt we had given up on): kept, counted and logged.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_callback_worker.metrics import CallbackMetrics
from paystream_core.statuses import Status, TransactionType
from paystream_gateway_worker.execution import failure_code
from paystream_gateways.protocol import ActionRequired, Declined, Outcome, Pending, Succeeded
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.models import Anomaly, Attempt, Transaction
from paystream_storage.transitions import lock_transaction, move

log = logging.getLogger(__name__)

# Attempt statuses a later report may still settle (the others are final or superseded).
_OPEN_ATTEMPT = frozenset({"started", "pending", "action_required", "ambiguous"})
# Attempt statuses under which we moved on to another gateway: it must not have executed.
_ABANDONED_ATTEMPT = frozenset({"not_executed", "declined"})


def target_status(outcome: Outcome) -> Status:
    match outcome:
        case Succeeded():
            return Status.SUCCEEDED
        case Pending():
            return Status.PENDING
        case ActionRequired():
            return Status.ACTION_REQUIRED
        case Declined():
            return Status.FAILED
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Applied:
    result: str  # moved | unchanged | stale | anomaly | superseded
    status: str  # the transaction's status afterwards


@dataclass(frozen=True, slots=True)
class Report:
    """Where a report came from, for events, anomalies and logs."""

    source: str  # CloudEvent source of the outcome event
    origin: str  # callback | reconciler
    connection_id: uuid.UUID
    event_id: str | None = None


async def find_attempt(
    session: AsyncSession,
    connection_id: uuid.UUID,
    reference: str | None,
    provider_reference: str | None,
) -> Attempt | None:
    """The attempt a report is about: by our idempotency key when the provider echoed it,
    else by the provider's reference. Only within the reporting connection, so one
    connection's (verified) callback can never move another connection's payments."""
    if reference:
        found = (
            await session.execute(
                select(Attempt).where(
                    Attempt.idempotency_key == reference, Attempt.connection_id == connection_id
                )
            )
        ).scalar_one_or_none()
        if found is not None:
            return found
    if provider_reference:
        return (
            await session.execute(
                select(Attempt)
                .where(
                    Attempt.provider_reference == provider_reference,
                    Attempt.connection_id == connection_id,
                )
                .order_by(Attempt.seq.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    return None


async def lock_for_report(
    session: AsyncSession, attempt: Attempt
) -> tuple[Transaction, Attempt, int]:
    """Lock the transaction, then the attempt (the gateway worker's order: no deadlock),
    and return the number of the transaction's latest attempt."""
    txn = await lock_transaction(session, attempt.transaction_id)
    assert txn is not None  # attempts reference their transaction
    locked = (
        await session.execute(select(Attempt).where(Attempt.id == attempt.id).with_for_update())
    ).scalar_one()
    await session.refresh(locked)
    latest = (
        await session.execute(select(func.max(Attempt.seq)).where(Attempt.transaction_id == txn.id))
    ).scalar_one()
    return txn, locked, int(latest)


async def apply_outcome(
    session: AsyncSession,
    registry: SchemaRegistry,
    metrics: CallbackMetrics,
    *,
    txn: Transaction,
    attempt: Attempt,
    latest_seq: int,
    outcome: Outcome,
    kind: TransactionType | None,
    report: Report,
) -> Applied:
    target = target_status(outcome)
    current = Status(txn.status)
    reference = outcome.provider_reference or None

    async def anomaly(name: str, detail: str) -> Applied:
        await record_anomaly(
            session, metrics, txn=txn, report=report, kind=name,
            reported=target.value, detail=detail,
        )  # fmt: skip
        return Applied("anomaly", txn.status)

    if kind is not None and kind.value != txn.type:
        return await anomaly(
            "type_mismatch", f"provider reports a {kind.value} for a {txn.type} transaction"
        )
    if attempt.seq != latest_seq:
        # We moved on from this attempt (it proved not executed, or was declined). A report
        # that it did execute means money may move twice: a human must look.
        if attempt.status in _ABANDONED_ATTEMPT and target != Status.FAILED:
            return await anomaly(
                "superseded_attempt_executed",
                f"attempt {attempt.seq} at {attempt.gateway_code} was {attempt.status} and"
                f" superseded by attempt {latest_seq}, but the provider reports {target.value}",
            )
        return Applied("superseded", txn.status)
    _record_on_attempt(attempt, outcome)
    if current == target:
        return Applied("unchanged", txn.status)
    failure = (
        (failure_code(outcome.code), outcome.message) if isinstance(outcome, Declined) else None
    )
    redirect = outcome.redirect_url if isinstance(outcome, ActionRequired) else None
    moved = await move(
        session, registry, txn, target, source=report.source, gateway=attempt.gateway_code,
        provider_reference=reference, failure=failure, redirect_url=redirect,
    )  # fmt: skip
    if moved:
        log.info("transaction %s: %s -> %s (%s %s)", txn.id, current.value, target.value,
                 report.origin, report.event_id or "")  # fmt: skip
        return Applied("moved", txn.status)
    if current.terminal and target.terminal:
        return await anomaly(
            "contradiction", f"transaction is {current.value}, provider reports {target.value}"
        )
    return Applied("stale", txn.status)


def _record_on_attempt(attempt: Attempt, outcome: Outcome) -> None:
    if outcome.provider_reference and not attempt.provider_reference:
        attempt.provider_reference = outcome.provider_reference
    if attempt.status not in _OPEN_ATTEMPT:
        return
    match outcome:
        case Succeeded():
            attempt.status = "succeeded"
        case Pending():
            attempt.status = "pending"
        case ActionRequired():
            attempt.status = "action_required"
        case Declined(code=code, message=message):
            attempt.status = "declined"
            attempt.error_class, attempt.error_code = "declined", failure_code(code)
            attempt.error_message = message[:2000]
    if attempt.status in ("succeeded", "declined"):
        attempt.finished_at = datetime.now(UTC)


async def record_anomaly(
    session: AsyncSession,
    metrics: CallbackMetrics,
    *,
    txn: Transaction | None,
    report: Report,
    kind: str,
    detail: str,
    reported: str | None = None,
    tenant_id: uuid.UUID | None = None,
) -> None:
    tenant = txn.tenant_id if txn is not None else tenant_id
    assert tenant is not None
    session.add(
        Anomaly(
            tenant_id=tenant,
            transaction_id=txn.id if txn is not None else None,
            connection_id=report.connection_id,
            source=report.origin,
            kind=kind,
            provider_event_id=(report.event_id or "")[:255] or None,
            transaction_status=txn.status if txn is not None else None,
            reported_status=reported,
            detail=detail[:4000],
        )
    )
    await session.flush()
    metrics.anomalies.labels(report.origin, kind).inc()
    log.error("ANOMALY %s from %s: transaction %s: %s", kind, report.origin,
              txn.id if txn is not None else "-", detail)  # fmt: skip
