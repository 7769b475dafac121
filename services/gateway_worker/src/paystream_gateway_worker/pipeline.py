"""Commands in batches: intake in offset order, execution concurrent, acks when done.

A batch (`paystream_streams.batching`) goes through intake (store, hold, route, record the
first attempts: one database transaction per tenant), and batches go through intake one
after the other, so one account's commands apply in offset order. Each batch's provider
calls then run in the background while the next batch is taken in; its records are acked
when their commands are finished (or dead-lettered).

A batch that fails for any reason is retried record by record through the standard loop
(`paystream_streams.handling`), so a poison record cannot hold back the others: it alone
goes to the dead-letter topic after its retries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.execution import Work, execute, run
from paystream_gateway_worker.handler import RETRY
from paystream_gateway_worker.intake import Accepted, OutOfPlace, intake
from paystream_gateway_worker.rejections import reject_dead_lettered
from paystream_streams.batching import Batches
from paystream_streams.handling import handle_record
from paystream_streams.records import RawRecord

log = logging.getLogger(__name__)


async def take_in(deps: WorkerDeps, batches: Batches) -> None:
    """The batch handler: runs until the worker stops."""
    while True:
        events = await batches.batch()
        records = [RawRecord.of(e.message) for e in events]
        accepted = await _intake(deps, records)
        todo = [a for a in accepted if a.plan is not None]
        working = {id(a.record) for a in todo}
        await batches.finish(
            [e for e, r in zip(events, records, strict=True) if id(r) not in working]
        )
        if todo:
            event_of = {id(r): e for e, r in zip(events, records, strict=True)}
            batches.spawn(_execute(deps, batches, todo, [event_of[id(a.record)] for a in todo]))


async def _intake(deps: WorkerDeps, records: Sequence[RawRecord]) -> list[Accepted]:
    try:
        return await intake(deps, records)
    except OutOfPlace as cut:
        # Each part with its own fallback: a part that fails after another part's dead
        # letters went out must not send them again.
        i = cut.index
        before = await _intake(deps, records[:i])
        alone = await _one(deps, records[i], _intake_one(deps, records[i])) or []
        return before + alone + await _intake(deps, records[i + 1 :])
    except Exception:
        log.exception("intake of a batch of %d failed; one by one now", len(records))
    accepted: list[Accepted] = []
    for record in records:
        accepted += await _one(deps, record, _intake_one(deps, record)) or []
    return accepted


async def _execute(
    deps: WorkerDeps, batches: Batches, accepted: Sequence[Accepted], events: Sequence[Any]
) -> None:
    try:
        await run(deps, [a.plan for a in accepted if a.plan is not None])
    except Exception:
        log.exception("execution of a batch of %d failed; one by one now", len(accepted))
        # Each carries on from what the database says, with its own retries.
        for a in accepted:
            await _one(deps, a.record, _execute_one(deps, a))
    # Not in a `finally`: a cancelled execution (shutdown) must stay unacked, so the
    # command is redelivered and resumed from the database.
    await batches.finish(events)


def _intake_one(deps: WorkerDeps, record: RawRecord) -> Callable[[], Awaitable[list[Accepted]]]:
    return lambda: intake(deps, [record])


def _execute_one(deps: WorkerDeps, accepted: Accepted) -> Callable[[], Awaitable[None]]:
    work = Work(accepted.tenant_id, accepted.transaction_id)
    return lambda: execute(deps, [work])


async def _one(deps: WorkerDeps, record: RawRecord, work: Callable[[], Awaitable[Any]]) -> Any:
    return await handle_record(
        record,
        work,
        retry=RETRY,
        dead_letters=deps.dead_letters,
        count_dead=deps.count_dead,
        what="command",
        before_dead_letter=lambda r, reason: reject_dead_lettered(deps, r, reason),
    )
