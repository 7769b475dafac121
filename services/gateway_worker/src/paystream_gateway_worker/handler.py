"""One command record, end to end: intake, then execution; never skipped silently."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import InterfaceError, OperationalError

from paystream_gateway_worker.commands import intake
from paystream_gateway_worker.deps import RawRecord, WorkerDeps
from paystream_gateway_worker.execution import execute
from paystream_messaging.async_publisher import PublishFailed

log = logging.getLogger(__name__)

# Infrastructure that is down comes back: such errors are retried without limit, so the
# offset never moves past a command that was not handled. Anything else is a bug or a
# poison record; after this many tries it goes to the dead-letter topic with the reason.
MAX_UNEXPECTED_FAILURES = 5


async def handle(deps: WorkerDeps, record: RawRecord) -> None:
    failures = 0
    delay = 0.2
    deps.metrics.in_flight.inc()
    try:
        while True:
            try:
                accepted = await intake(deps, record)
                if accepted is not None:
                    await execute(deps, accepted.tenant_id, accepted.transaction_id)
                deps.metrics.progressed()
                return
            except (OperationalError, InterfaceError, PublishFailed, OSError) as exc:
                log.warning("command at %s[%d]@%d: %s; retrying in %.1fs",
                            record.topic, record.partition, record.offset, exc, delay)  # fmt: skip
            except Exception as exc:
                failures += 1
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                log.exception("command at %s failed (%d/%d)", where, failures,
                              MAX_UNEXPECTED_FAILURES)  # fmt: skip
                if failures >= MAX_UNEXPECTED_FAILURES:
                    await deps.dead_letters.send(
                        record, f"processing_failed: {type(exc).__name__}: {exc}"[:2000]
                    )
                    deps.metrics.dead_letters.labels("processing_failed").inc()
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
    finally:
        deps.metrics.in_flight.dec()
