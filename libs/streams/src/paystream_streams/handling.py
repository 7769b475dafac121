"""The loop every paystream consumer runs a record through: never skip one silently.

Infrastructure that is down comes back, so those errors are retried without limit and the
offset never moves past a record that was not handled. Anything else is a bug or a poison
record: after `max_failures` tries it goes to the dead-letter topic with the reason, and
the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from paystream_streams.records import DeadLetters, RawRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_UNEXPECTED_FAILURES = 5
MAX_REASON = 2000


@dataclass(frozen=True, slots=True)
class Retry:
    """How a consumer retries: which errors are transient, how long to wait between tries."""

    transient: tuple[type[BaseException], ...]
    max_failures: int = MAX_UNEXPECTED_FAILURES
    first_delay_s: float = 0.2
    max_delay_s: float = 30.0


async def dead_letter(
    dead_letters: DeadLetters,
    record: RawRecord,
    reason: str,
    count: Callable[[str], None],
) -> None:
    """Send `record` to the dead-letter topic; `count` gets the reason's first word."""
    log.warning(
        "dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
    )
    await dead_letters.send(record, reason)
    count(reason.split(":", 1)[0])


async def handle_record(
    record: RawRecord,
    work: Callable[[], Awaitable[T]],
    *,
    retry: Retry,
    dead_letters: DeadLetters,
    count_dead: Callable[[str], None],
    what: str = "record",
    before_dead_letter: Callable[[RawRecord, str], Awaitable[object]] | None = None,
) -> T | None:
    """Run `work` until it succeeds; None when the record was dead-lettered instead.

    `before_dead_letter(record, reason)` runs first when a record is given up on (e.g. to
    make what the record asked for visible as rejected); its failure is logged and the
    record is dead-lettered all the same, so a record is never stuck on it."""
    failures = 0
    delay = retry.first_delay_s
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    while True:
        try:
            return await work()
        except retry.transient as exc:
            log.warning("%s at %s: %s; retrying in %.1fs", what, where, exc, delay)
        except Exception as exc:
            failures += 1
            log.exception("%s at %s failed (%d/%d)", what, where, failures, retry.max_failures)
            if failures >= retry.max_failures:
                reason = f"processing_failed: {type(exc).__name__}: {exc}"[:MAX_REASON]
                if before_dead_letter is not None:
                    try:
                        await before_dead_letter(record, reason)
                    except Exception:
                        log.exception("%s at %s: before its dead letter", what, where)
                await dead_letter(dead_letters, record, reason, count_dead)
                return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry.max_delay_s)
