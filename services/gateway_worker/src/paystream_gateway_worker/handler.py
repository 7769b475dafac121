"""Command records, end to end: intake, then execution; never skipped silently."""

from __future__ import annotations

from collections.abc import Sequence

from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.execution import run
from paystream_gateway_worker.intake import OutOfPlace, intake
from paystream_gateway_worker.rejections import reject_dead_lettered
from paystream_messaging.async_publisher import PublishFailed
from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_streams.handling import Retry, handle_record
from paystream_streams.records import RawRecord

# Down infrastructure comes back: the database, Kafka (dead letters), the network.
RETRY = Retry(transient=(*TRANSIENT_DB_ERRORS, PublishFailed, OSError))


async def handle(deps: WorkerDeps, record: RawRecord) -> None:
    """One command: retried while infrastructure is down, dead-lettered if it keeps failing."""

    async def work() -> None:
        await process(deps, [record])

    deps.metrics.in_flight.inc()
    try:
        await handle_record(
            record,
            work,
            retry=RETRY,
            dead_letters=deps.dead_letters,
            count_dead=deps.count_dead,
            what="command",
            before_dead_letter=lambda r, reason: reject_dead_lettered(deps, r, reason),
        )
        deps.metrics.progressed()
    finally:
        deps.metrics.in_flight.dec()


async def process(deps: WorkerDeps, records: Sequence[RawRecord]) -> None:
    try:
        accepted = await intake(deps, records)
    except OutOfPlace as cut:  # never for one record; see pipeline.py for batches
        i = cut.index
        for part in (records[:i], records[i : i + 1], records[i + 1 :]):
            await process(deps, part)
        return
    await run(deps, [a.plan for a in accepted if a.plan is not None])
