"""The reconciler: transactions nobody will finish unless we ask the provider.

- `pending` / `unknown` untouched for `reconciler_pending_age_s`: look the attempt up at its
  provider (by our idempotency key and its reference); a result is applied like a callback.
  Lookups back off per transaction (`reconciliations` table). Past the horizon a transaction
  stays as it is and is reported (metric, log, `paystream transactions unresolved`): it is
  never failed automatically while the money may have moved.
- `unknown` proven absent by a conclusive lookup: the attempt never executed -> `failed`.
- `action_required` past `reconciler_action_expiry_s`: looked up first (the customer may
  have finished and the callback been lost); still waiting -> `failed` (`expired`).
- `processing` with a `started` attempt older than `reconciler_processing_age_s`: the
  gateway worker died during the call and its command never came back. Looked up by the
  attempt's idempotency key (`paystream_core.reports.resume_processing`): an answer is
  applied like a callback; proven absent -> the command is queued again through the outbox,
  and the worker resumes it as a redelivery (same key; its own fallback rules); nothing
  conclusive -> backoff; past `reconciler_processing_horizon_s` -> `unknown` (the lookups
  above take over), never `failed`. A worker that redoes the attempt (a redelivery) restarts
  its `started_at` before it calls, so a redo in flight is not due; one that started while
  we looked it up is left to the worker (re-checked under the transaction's lock).

The rules are `paystream_core.reports.reconcile`. No database transaction is open during a
lookup: read, call, then lock and re-check.

`AuditExporter` runs the money audit's checks (`paystream audit`) every
`reconciler_audit_interval_s` and exports the violations per check as gauges.
`BacklogExporter` exports, every `reconciler_interval_s`, how many transactions wait
`pending`/`unknown` per gateway and the oldest one's age, and the outbox's unpublished rows
and the oldest one's age (deploy/observability alerts on these ages).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from paystream_core.audit import CHECK_NAMES, AuditCounts, Horizons
from paystream_core.outcomes import Outcome
from paystream_core.ports import AttemptKey, PaymentUnit
from paystream_core.records import TransactionRecord
from paystream_core.reports import (
    RECONCILED,
    Fail,
    Keep,
    MarkUnknown,
    Report,
    Resubmit,
    lookup_result,
    mark_unknown,
    next_lookup_delay,
    reconcile,
    resume_processing,
)
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_core.transitions import transition
from paystream_gateways.callbacks import callback_gateway
from paystream_gateways.errors import GatewayError, GatewaySetupError
from paystream_gateways.protocol import StatusQuery, StatusResult
from paystream_provider_reports.apply import Incoming, Source, apply_reports, unattached_anomaly
from paystream_provider_reports.deps import CallbackDeps
from paystream_provider_reports.metrics import CallbackMetrics
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_storage.backlog import Backlog

log = logging.getLogger(__name__)

SOURCE = Source("/paystream/reconciler", "reconciler")


@dataclass(frozen=True, slots=True)
class _Target:
    status: Status
    kind: TransactionType
    attempt_key: str
    connection_id: uuid.UUID
    gateway: str
    query: StatusQuery
    # When the looked-up attempt was (last) started: a worker that redoes it moves this, so
    # a resolution under the lock can tell that the call it looked up is in flight again.
    started_at: datetime | None = None


# What the reconciler looks up: transactions waiting for a provider or a customer, and those
# a dead gateway worker left in the middle of a call.
_LOOKED_AFTER = RECONCILED | {Status.PROCESSING}


async def every(
    interval_s: float, work: Callable[[], Awaitable[object]], stop: asyncio.Event, what: str
) -> None:
    """Run `work` every `interval_s` until `stop`; a failed run (a database outage) is
    logged and the next one comes on schedule."""
    while not stop.is_set():
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


class Reconciler:
    def __init__(self, deps: CallbackDeps, settings: ReconcilerSettings) -> None:
        self.deps = deps
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.settings.reconciler_interval_s, self.run_once, stop, "reconciler round")

    async def run_once(self) -> dict[str, int]:
        """One round over what is due; returns counts by result."""
        s = self.settings
        async with self.deps.store.unit(None) as unit:
            due = await unit.reconcile_due(
                pending_age_s=s.reconciler_pending_age_s,
                action_expiry_s=s.reconciler_action_expiry_s,
                limit=s.reconciler_batch_size,
            )
            due += await unit.processing_due(
                age_s=s.reconciler_processing_age_s, limit=s.reconciler_batch_size
            )
        limit = asyncio.Semaphore(s.reconciler_concurrency)

        async def one(tenant_id: uuid.UUID, txn_id: uuid.UUID) -> str:
            async with limit:
                try:
                    return await self.reconcile(tenant_id, txn_id)
                except Exception:
                    log.exception("reconciling transaction %s failed", txn_id)
                    return "error"

        results = await asyncio.gather(*(one(t, x) for t, x in due))
        counts: dict[str, int] = {}
        for result in results:
            counts[result] = counts.get(result, 0) + 1
        async with self.deps.store.unit(None) as unit:
            unresolved = await unit.unresolved_count(
                horizon_s=s.reconciler_horizon_s,
                stuck_processing_s=s.reconciler_stuck_processing_s,
            )
        self.deps.metrics.unresolved.set(unresolved)
        if due:
            log.info("reconciler round: %s; %d unresolved past the horizon", counts, unresolved)
        return counts

    async def reconcile(self, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> str:
        target = await self._target(tenant_id, txn_id)
        if target is None:
            return "skipped"
        result, found = await self._look_up(tenant_id, target)
        async with self.deps.store.unit(tenant_id) as unit:
            txn = (await unit.lock_transactions([txn_id]))[txn_id]
            if target.status == Status.PROCESSING:
                result = await self._resume(unit, txn, target, found, result)
                txn = (await unit.lock_transactions([txn_id]))[txn_id]
            elif txn.status in RECONCILED:
                result = await self._conclude(unit, txn, target, found) or result
                txn = (await unit.lock_transactions([txn_id]))[txn_id]
            else:
                result = f"already_{txn.status.value}"
            await self._book(unit, txn, result)
        self.deps.metrics.lookups.labels(target.gateway, result.split(":", 1)[0]).inc()
        return result

    async def _target(self, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> _Target | None:
        async with self.deps.store.unit(tenant_id) as unit:
            txn = await unit.transaction(txn_id)
            if txn is None or txn.status not in _LOOKED_AFTER:
                return None
            attempts = (await unit.attempts([txn_id]))[txn_id]
            stuck = txn.status == Status.PROCESSING
            if stuck and (not attempts or attempts[-1].status != AttemptStatus.STARTED):
                return None  # the worker finished the call or is recording the next one
            if stuck and not await unit.started_for(
                attempts[-1].id, age_s=self.settings.reconciler_processing_age_s
            ):
                # A worker (re)started the call since it was found due. Judged by the
                # database's clock, which `processing_due` and the redo's restart use: ours
                # running ahead would take the redo in flight for an abandoned call.
                return None
            if not attempts:  # pending without an attempt cannot happen; say so
                await self._book(unit, txn, "no_attempt")
                return None
            attempt = attempts[-1]
            # A started attempt has no reference of its own, and the transaction's may name
            # an earlier attempt's payment: look it up by our key alone.
            reference = attempt.provider_reference
            if not stuck:
                reference = reference or txn.provider_reference
            query = StatusQuery(
                kind=txn.type, idempotency_key=attempt.idempotency_key, provider_reference=reference
            )
            return _Target(
                txn.status,
                txn.type,
                attempt.idempotency_key,
                attempt.connection_id,
                attempt.gateway_code,
                query,
                attempt.started_at,
            )

    async def _look_up(
        self, tenant_id: uuid.UUID, target: _Target
    ) -> tuple[str, StatusResult | None]:
        try:
            _, gateway = await callback_gateway(
                self.deps.gateways, self.deps.connections, tenant_id, target.connection_id
            )
            found = await gateway.status(target.query)
        except GatewayError as exc:
            return f"lookup_failed: {exc.reason}: {exc.message}"[:500], None
        except GatewaySetupError as exc:
            return f"lookup_failed: {exc}"[:500], None
        return f"found: {type(found).__name__.lower()}", found

    async def _conclude(
        self,
        unit: PaymentUnit,
        txn: TransactionRecord,
        target: _Target,
        found: StatusResult | None,
    ) -> str | None:
        """Apply what the lookup found to the (locked) transaction; the result name."""
        expired = txn.status == Status.ACTION_REQUIRED and _older_than(
            txn.updated_at, self.settings.reconciler_action_expiry_s
        )
        decision = reconcile(txn.status, expired=expired, found=found)
        match decision:
            case Fail(result=result, failure=failure):
                move = transition(txn, Status.FAILED, at=datetime.now(UTC), failure=failure)
                assert move is not None  # RECONCILED statuses may fail
                await unit.apply([move], source=SOURCE.event_source)
                if result == "expired":
                    self.deps.metrics.expired.inc()
                return result
            case Keep(result=result, anomaly=anomaly):
                if anomaly is not None:
                    record = unattached_anomaly(
                        self.deps.metrics,
                        tenant_id=txn.tenant_id,
                        connection_id=target.connection_id,
                        origin=SOURCE.origin,
                        kind=anomaly.kind,
                        detail=anomaly.detail,
                        txn=txn,
                    )
                    await unit.add_anomalies([record])
                return result
            case Report(outcome=outcome):
                return await self._report(unit, target, outcome)
        raise AssertionError(decision)  # pragma: no cover

    async def _report(self, unit: PaymentUnit, target: _Target, outcome: Outcome) -> str:
        """Apply the provider's answer like a callback; the result name."""
        key = AttemptKey(target.connection_id, target.attempt_key, None)
        [applied] = await apply_reports(
            unit, self.deps.metrics, SOURCE, [Incoming(key, outcome, None)]
        )
        assert applied is not None  # the attempt was read above and is kept
        return lookup_result(applied.applied, applied.status, outcome)

    async def _resume(
        self,
        unit: PaymentUnit,
        txn: TransactionRecord,
        target: _Target,
        found: StatusResult | None,
        looked_up: str,
    ) -> str:
        """A (locked) transaction left `processing` by a dead worker, after the lookup of its
        started attempt (`looked_up` names how it went); the result name."""
        if txn.status != Status.PROCESSING:
            return f"already_{txn.status.value}"
        newest = (await unit.attempts([txn.id], lock=True))[txn.id][-1]
        if newest.idempotency_key != target.attempt_key or newest.status != AttemptStatus.STARTED:
            # The worker finished this call, or fell back, while we asked: it carries on.
            return "attempt_moved_on"
        if newest.started_at != target.started_at:
            # A worker redid the call while we asked: our "not found" may predate its call,
            # which is in flight. Acting on it (queue the command again, let the next gateway
            # be tried) could execute the payment twice; the worker carries on.
            return "attempt_redone"
        horizon = self.settings.reconciler_processing_horizon_s
        past_horizon = await unit.started_for(newest.id, age_s=horizon)  # the database's clock
        decision = resume_processing(found, past_horizon=past_horizon)
        now = datetime.now(UTC)
        match decision:
            case Report(outcome=outcome):
                return await self._report(unit, target, outcome)
            case Resubmit(result=result):
                # Numbered by the lookup, so every resubmission is a new outbox event.
                lookups = (await unit.reconciliation(txn.id)).lookups + 1
                await unit.resubmit(
                    [txn], source=SOURCE.event_source, at=now, nonce=f"lookup-{lookups}"
                )
                log.info(
                    "transaction %s: attempt %d at %s was never finished (%s); its command is"
                    " queued again for the gateway worker",
                    txn.id,
                    newest.seq,
                    newest.gateway_code,
                    result,
                )
                return result
            case MarkUnknown(result=result):
                detail = (
                    f"the gateway worker never finished this call and no status lookup was"
                    f" conclusive within {horizon:g}s (last: {looked_up})"
                )
                marked = mark_unknown(txn, newest, at=now, detail=detail)
                assert marked is not None  # both checked above, under their locks
                attempt, move = marked
                await unit.save_attempts([attempt])
                await unit.apply([move], source=SOURCE.event_source)
                log.warning(
                    "transaction %s stuck in processing: attempt %d at %s marked ambiguous and"
                    " the transaction unknown (never failed: the call may have executed): %s",
                    txn.id,
                    newest.seq,
                    newest.gateway_code,
                    looked_up,
                )
                return f"{result}: {looked_up}"
            case Keep(result=result):
                return result or looked_up
        raise AssertionError(decision)  # pragma: no cover

    async def _book(self, unit: PaymentUnit, txn: TransactionRecord, result: str) -> None:
        """Count the lookup, schedule the next one (exponential backoff with jitter) and
        report a transaction that passed the horizon, once."""
        s = self.settings
        now = datetime.now(UTC)
        record = await unit.reconciliation(txn.id)
        lookups = record.lookups + 1
        wait = next_lookup_delay(
            lookups, base_s=s.reconciler_backoff_base_s, max_s=s.reconciler_backoff_max_s
        )
        reported_at = record.reported_at
        unresolved = txn.status in (Status.PENDING, Status.UNKNOWN)
        if (
            unresolved
            and reported_at is None
            and txn.created_at is not None
            and _older_than(txn.created_at, s.reconciler_horizon_s)
        ):
            reported_at = now
            log.warning(
                "transaction %s is still %s after %ss: UNRESOLVED, needs a human (last lookup: %s)",
                txn.id,
                txn.status.value,
                s.reconciler_horizon_s,
                result,
            )
        await unit.save_reconciliation(
            dataclasses.replace(
                record,
                lookups=lookups,
                last_lookup_at=now,
                last_result=result[:2000],
                next_lookup_at=now + timedelta(seconds=wait * random.uniform(0.8, 1.0)),
                reported_at=reported_at,
            )
        )


class AuditExporter:
    """The money audit's violation counts as metrics, on the reconciler's horizons."""

    def __init__(
        self, source: AuditCounts, metrics: CallbackMetrics, settings: ReconcilerSettings
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        # A failed run (a DB outage) leaves the gauges at their last values.
        await every(self.settings.reconciler_audit_interval_s, self.run_once, stop, "money audit")

    async def run_once(self) -> Mapping[str, int]:
        s = self.settings
        started = time.monotonic()
        counts = await self.source.counts(
            Horizons(
                horizon_s=s.reconciler_horizon_s,
                stuck_processing_s=s.reconciler_stuck_processing_s,
            )
        )
        for check in CHECK_NAMES:
            self.metrics.audit_violations.labels(check).set(counts.get(check, 0))
        self.metrics.audit_duration.set(time.monotonic() - started)
        self.metrics.audit_last_success.set_to_current_time()
        failed = {check: n for check, n in counts.items() if n}
        if failed:
            log.error(
                "money audit: violations %s: run `paystream audit --verbose` for details", failed
            )
        return counts


class BacklogSource(Protocol):
    async def read(self) -> Backlog: ...


class BacklogExporter:
    """What waits, and the oldest one's age, as gauges."""

    def __init__(
        self, source: BacklogSource, metrics: CallbackMetrics, settings: ReconcilerSettings
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.settings.reconciler_interval_s, self.run_once, stop, "backlog read")

    async def run_once(self) -> Backlog:
        backlog = await self.source.read()
        m = self.metrics
        # A gateway whose backlog drained must not keep its last age: the labels are rebuilt
        # from this read (no await in between, so a scrape never sees them half-built).
        m.waiting.clear()
        m.waiting_oldest.clear()
        for w in backlog.waiting:
            m.waiting.labels(w.gateway, w.status).set(w.transactions)
            m.waiting_oldest.labels(w.gateway, w.status).set(w.oldest_age_s)
        m.outbox_unpublished.set(backlog.outbox_unpublished)
        m.outbox_oldest.set(backlog.outbox_oldest_age_s)
        m.backlog_last_success.set_to_current_time()
        return backlog


def _older_than(at: datetime | None, seconds: float) -> bool:
    return at is not None and at <= datetime.now(UTC) - timedelta(seconds=seconds)
