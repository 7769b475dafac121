"""Provider reports (callbacks and status lookups) applied to their transactions.

The rules are `paystream_core.reports.judge`; this module reads what they need through the
storage port and writes what they decide, in the caller's unit: attempts, state changes
(ledger and outcome event included) and anomalies, all in one database transaction.
Transactions are locked before their attempts, the gateway worker's order: no deadlock.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from paystream_core.outcomes import Outcome
from paystream_core.ports import AnomalyRecord, AttemptKey, PaymentUnit
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.reports import Anomaly, Applied, judge
from paystream_core.statuses import Status, TransactionType
from paystream_core.transitions import Transition
from paystream_provider_reports.metrics import CallbackMetrics

log = logging.getLogger(__name__)

MAX_ANOMALY_DETAIL = 4000


@dataclass(frozen=True, slots=True)
class Source:
    """Where reports came from, for outcome events, anomalies and logs."""

    event_source: str  # CloudEvent source of the outcome events
    origin: str  # callback | reconciler


@dataclass(frozen=True, slots=True)
class Incoming:
    """One provider report about the attempt `key` names."""

    key: AttemptKey
    outcome: Outcome
    kind: TransactionType | None  # what the provider says the payment is (None: unknown)
    event_id: str | None = None  # the provider's event id, for anomalies and logs


@dataclass(frozen=True, slots=True)
class Result:
    applied: Applied
    status: Status  # the transaction's status afterwards


async def apply_reports(
    unit: PaymentUnit,
    metrics: CallbackMetrics,
    source: Source,
    reports: Sequence[Incoming],
) -> list[Result | None]:
    """Apply each report in order; None for a report whose attempt is not known (an orphan).
    Several reports about one transaction apply one after the other."""
    found, txns, locked = await unit.find_and_lock([r.key for r in reports])
    attempts: dict[uuid.UUID, AttemptRecord] = {a.id: a for group in locked.values() for a in group}
    latest: dict[uuid.UUID, int] = {}
    for a in attempts.values():
        latest[a.transaction_id] = max(latest.get(a.transaction_id, 0), a.seq)
    now = datetime.now(UTC)
    results: list[Result | None] = []
    moves: list[Transition] = []
    saved: dict[uuid.UUID, AttemptRecord] = {}
    anomalies: list[AnomalyRecord] = []
    for report in reports:
        named = found.get(report.key)
        if named is None:
            results.append(None)
            continue
        txn = txns[named.transaction_id]
        attempt = attempts[named.id]
        verdict = judge(txn, attempt, latest[txn.id], report.outcome, report.kind, at=now)
        if verdict.attempt is not None:
            attempts[attempt.id] = saved[attempt.id] = verdict.attempt
        if verdict.anomaly is not None:
            anomalies.append(_anomaly(metrics, source, report, txn, verdict.anomaly))
        if verdict.transition is not None:
            moves.append(verdict.transition)
            txns[txn.id] = txn = verdict.transition.after
            log.info(
                "transaction %s: %s -> %s (%s %s)",
                txn.id,
                verdict.transition.before.status.value,
                txn.status.value,
                source.origin,
                report.event_id or "",
            )
        results.append(Result(verdict.result, txn.status))
    await unit.save_attempts(list(saved.values()))
    await unit.apply(moves, source=source.event_source)
    await unit.add_anomalies(anomalies)
    return results


def _anomaly(
    metrics: CallbackMetrics,
    source: Source,
    report: Incoming,
    txn: TransactionRecord,
    anomaly: Anomaly,
) -> AnomalyRecord:
    metrics.anomalies.labels(source.origin, anomaly.kind).inc()
    log.error(
        "ANOMALY %s from %s: transaction %s: %s",
        anomaly.kind,
        source.origin,
        txn.id,
        anomaly.detail,
    )
    return AnomalyRecord(
        tenant_id=txn.tenant_id,
        transaction_id=txn.id,
        connection_id=report.key.connection_id,
        source=source.origin,
        kind=anomaly.kind,
        provider_event_id=(report.event_id or "")[:255] or None,
        transaction_status=txn.status.value,
        reported_status=anomaly.reported,
        detail=anomaly.detail[:MAX_ANOMALY_DETAIL],
    )


def unattached_anomaly(
    metrics: CallbackMetrics,
    *,
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
    origin: str,
    kind: str,
    detail: str,
    txn: TransactionRecord | None = None,
    event_id: str | None = None,
) -> AnomalyRecord:
    """An anomaly that is not a judgement on a report (a malformed callback, a payment the
    provider no longer knows): counted and logged like the others."""
    metrics.anomalies.labels(origin, kind).inc()
    log.error(
        "ANOMALY %s from %s: transaction %s: %s",
        kind,
        origin,
        txn.id if txn is not None else "-",
        detail,
    )
    return AnomalyRecord(
        tenant_id=tenant_id,
        transaction_id=txn.id if txn is not None else None,
        connection_id=connection_id,
        source=origin,
        kind=kind,
        provider_event_id=(event_id or "")[:255] or None,
        transaction_status=txn.status.value if txn is not None else None,
        detail=detail[:MAX_ANOMALY_DETAIL],
    )
