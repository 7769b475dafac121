"""The reconciler: transactions nobody will finish unless we ask the provider.

- `pending` / `unknown` untouched for `reconciler_pending_age_s`: look the attempt up at its
  provider (by our idempotency key and its reference); a result is applied like a callback.
  Lookups back off per transaction (`reconciliations` table). Past the horizon a transaction
  stays as it is and is reported (metric, log, `paystream transactions unresolved`): it is
  never failed automatically while the money may have moved.
- `unknown` proven absent by a conclusive lookup: the attempt never executed -> `failed`.
- `action_required` past `reconciler_action_expiry_s`: looked up first (the customer may
  have finished and the callback been lost); still waiting -> `failed` (`expired`).

No DB transaction is open during a lookup: read, call, then lock and re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_callback_worker.apply import (
    Report,
    apply_outcome,
    lock_for_report,
    record_anomaly,
)
from paystream_callback_worker.deps import CallbackDeps
from paystream_callback_worker.settings import ReconcilerSettings
from paystream_core.statuses import Status, TransactionType
from paystream_gateways.callbacks import callback_gateway
from paystream_gateways.errors import GatewayError, GatewaySetupError
from paystream_gateways.protocol import (
    ActionRequired,
    NotFound,
    Pending,
    StatusQuery,
    StatusResult,
)
from paystream_storage.db import tenant_session
from paystream_storage.models import Attempt, Reconciliation, Transaction
from paystream_storage.transitions import lock_transaction, move

log = logging.getLogger(__name__)

SOURCE = "/paystream/reconciler"
_DUE = text("SELECT tenant_id, transaction_id FROM paystream_reconcile_due(:age, :expiry, :n)")
_UNRESOLVED = text("SELECT paystream_unresolved_count(:horizon, :stuck)")
_RECONCILED = frozenset({Status.PENDING, Status.UNKNOWN, Status.ACTION_REQUIRED})


@dataclass(frozen=True, slots=True)
class _Target:
    status: Status
    kind: TransactionType
    attempt_id: uuid.UUID
    connection_id: uuid.UUID
    gateway: str
    query: StatusQuery


class Reconciler:
    def __init__(self, deps: CallbackDeps, settings: ReconcilerSettings) -> None:
        self.deps = deps
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a DB outage: try again next round
                log.exception("reconciler round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.reconciler_interval_s)

    async def run_once(self) -> dict[str, int]:
        """One round over what is due; returns counts by result."""
        s = self.settings
        async with tenant_session(self.deps.sessions, None) as session:
            due = (
                await session.execute(
                    _DUE,
                    {
                        "age": s.reconciler_pending_age_s,
                        "expiry": s.reconciler_action_expiry_s,
                        "n": s.reconciler_batch_size,
                    },
                )
            ).all()
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
        async with tenant_session(self.deps.sessions, None) as session:
            unresolved = (
                await session.execute(
                    _UNRESOLVED,
                    {"horizon": s.reconciler_horizon_s, "stuck": s.reconciler_stuck_processing_s},
                )
            ).scalar_one()
        self.deps.metrics.unresolved.set(int(unresolved))
        if due:
            log.info("reconciler round: %s; %d unresolved past the horizon", counts, unresolved)
        return counts

    async def reconcile(self, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> str:
        target = await self._target(tenant_id, txn_id)
        if target is None:
            return "skipped"
        result, found = await self._look_up(tenant_id, target)
        async with tenant_session(self.deps.sessions, tenant_id) as session:
            txn = await lock_transaction(session, txn_id)
            assert txn is not None
            if Status(txn.status) in _RECONCILED:
                outcome = await self._conclude(session, txn, target, found)
                result = outcome or result
            else:
                result = f"already_{txn.status}"
            await self._book(session, txn, result)
        self.deps.metrics.lookups.labels(target.gateway, result.split(":", 1)[0]).inc()
        return result

    async def _target(self, tenant_id: uuid.UUID, txn_id: uuid.UUID) -> _Target | None:
        async with tenant_session(self.deps.sessions, tenant_id) as session:
            txn = await session.get(Transaction, txn_id)
            if txn is None or Status(txn.status) not in _RECONCILED:
                return None
            attempt = (
                await session.execute(
                    select(Attempt)
                    .where(Attempt.transaction_id == txn_id)
                    .order_by(Attempt.seq.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if attempt is None:  # pending without an attempt cannot happen; say so
                await self._book(session, txn, "no_attempt")
                return None
            kind = TransactionType(txn.type)
            query = StatusQuery(
                kind=kind,
                idempotency_key=attempt.idempotency_key,
                provider_reference=attempt.provider_reference or txn.provider_reference,
            )
            return _Target(Status(txn.status), kind, attempt.id, attempt.connection_id,
                           attempt.gateway_code, query)  # fmt: skip

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
        self, session: AsyncSession, txn: Transaction, target: _Target, found: StatusResult | None
    ) -> str | None:
        """Apply what the lookup found to the (locked) transaction; the result name."""
        report = Report(SOURCE, "reconciler", target.connection_id)
        current = Status(txn.status)
        expired = current == Status.ACTION_REQUIRED and _older_than(
            txn.updated_at, self.settings.reconciler_action_expiry_s
        )
        if found is None:
            return None  # the lookup failed: nothing is known, try again later
        if isinstance(found, NotFound):
            if current == Status.UNKNOWN and found.conclusive:
                await move(session, self.deps.registry, txn, Status.FAILED, source=SOURCE,
                           failure=("absent_at_provider",
                                    "the provider has no record of the attempt"))  # fmt: skip
                return "absent_failed"
            if current == Status.PENDING and found.conclusive:
                await record_anomaly(
                    session, self.deps.metrics, txn=txn, report=report, kind="vanished",
                    detail="the provider reported this payment, and now has no record of it",
                )  # fmt: skip
                return "anomaly"
            if expired and found.conclusive:
                return await self._expire(session, txn)
            return "not_found_inconclusive"
        if expired and isinstance(found, ActionRequired):
            return await self._expire(session, txn)
        attempt = (
            await session.execute(select(Attempt).where(Attempt.id == target.attempt_id))
        ).scalar_one()
        txn, attempt, latest = await lock_for_report(session, attempt)
        applied = await apply_outcome(
            session, self.deps.registry, self.deps.metrics, txn=txn, attempt=attempt,
            latest_seq=latest, outcome=found, kind=None, report=report,
        )  # fmt: skip
        if applied.result == "unchanged" and isinstance(found, Pending | ActionRequired):
            return f"still_{txn.status}"
        return f"{applied.result}_{txn.status}"

    async def _expire(self, session: AsyncSession, txn: Transaction) -> str:
        failure = ("expired", "the customer action was not completed in time")
        await move(session, self.deps.registry, txn, Status.FAILED, source=SOURCE, failure=failure)
        self.deps.metrics.expired.inc()
        return "expired"

    async def _book(self, session: AsyncSession, txn: Transaction, result: str) -> None:
        """Count the lookup, schedule the next one (exponential backoff with jitter) and
        report a transaction that passed the horizon, once."""
        s = self.settings
        now = datetime.now(UTC)
        row = (
            await session.execute(
                insert(Reconciliation)
                .values(transaction_id=txn.id, tenant_id=txn.tenant_id)
                .on_conflict_do_nothing()
                .returning(Reconciliation.transaction_id)
            )
        ).first()
        del row
        rec = (
            await session.execute(
                select(Reconciliation)
                .where(Reconciliation.transaction_id == txn.id)
                .with_for_update()
            )
        ).scalar_one()
        await session.refresh(rec)
        rec.lookups += 1
        rec.last_lookup_at = now
        rec.last_result = result[:2000]
        wait = min(s.reconciler_backoff_base_s * 2 ** min(rec.lookups - 1, 30),
                   s.reconciler_backoff_max_s)  # fmt: skip
        rec.next_lookup_at = now + timedelta(seconds=wait * random.uniform(0.8, 1.0))
        unresolved = txn.status in ("pending", "unknown")
        if (
            unresolved
            and rec.reported_at is None
            and _older_than(txn.created_at, s.reconciler_horizon_s)
        ):
            rec.reported_at = now
            log.warning("transaction %s is still %s after %ss: UNRESOLVED, needs a human"
                        " (last lookup: %s)", txn.id, txn.status, s.reconciler_horizon_s,
                        result)  # fmt: skip


def _older_than(at: datetime, seconds: float) -> bool:
    return at <= datetime.now(UTC) - timedelta(seconds=seconds)
