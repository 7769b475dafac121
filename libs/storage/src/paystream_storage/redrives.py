"""The redrive log: which dead letters were sent back to their topic, by whom, and where
they landed (table `dead_letter_redrives`, owner role: only the CLI uses it).

A redrive is claimed (committed) before the record is sent, then confirmed or marked
failed. A claim is refused when the same failed record (original position and content)
was redriven already and neither was forced nor failed, so a dead letter is not sent back
twice by accident, nor its duplicate (a worker may dead-letter a record twice: at least
once). A crash between claim and send leaves an unconfirmed claim an operator can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_storage.models import DeadLetterRedrive

_ONCE = text("NOT forced AND failure IS NULL")
_SAME_RECORD = ["original_topic", "original_partition", "original_offset", "record_digest"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What is about to be redriven."""

    dead_letter_topic: str
    dead_letter_partition: int
    dead_letter_offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    record_digest: str
    reason: str
    redrive_count: int  # the `dlq_redrives` header the redriven record carries
    forced: bool
    redriven_by: str


async def claim(session: AsyncSession, what: Claim) -> int | None:
    """Record the redrive about to happen; its id, or None when the record was redriven
    already (and `what` is not forced)."""
    if not what.forced and await previous(session, what):
        return None
    statement = (
        insert(DeadLetterRedrive)
        .values(
            dead_letter_topic=what.dead_letter_topic,
            dead_letter_partition=what.dead_letter_partition,
            dead_letter_offset=what.dead_letter_offset,
            original_topic=what.original_topic,
            original_partition=what.original_partition,
            original_offset=what.original_offset,
            record_digest=what.record_digest,
            reason=what.reason,
            redrive_count=what.redrive_count,
            forced=what.forced,
            redriven_by=what.redriven_by[:255],
        )
        # Two operators at once: the unique index lets one claim through.
        .on_conflict_do_nothing(
            index_elements=_SAME_RECORD,
            index_where=_ONCE,
        )
        .returning(DeadLetterRedrive.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def previous(session: AsyncSession, what: Claim) -> list[DeadLetterRedrive]:
    """Earlier redrives of the same record, or of the same dead letter, that did not fail
    (forced ones included), oldest first."""
    rows = await session.execute(
        select(DeadLetterRedrive)
        .where(
            DeadLetterRedrive.failure.is_(None),
            or_(
                and_(
                    DeadLetterRedrive.original_topic == what.original_topic,
                    DeadLetterRedrive.original_partition == what.original_partition,
                    DeadLetterRedrive.original_offset == what.original_offset,
                    DeadLetterRedrive.record_digest == what.record_digest,
                ),
                and_(
                    DeadLetterRedrive.dead_letter_topic == what.dead_letter_topic,
                    DeadLetterRedrive.dead_letter_partition == what.dead_letter_partition,
                    DeadLetterRedrive.dead_letter_offset == what.dead_letter_offset,
                    DeadLetterRedrive.record_digest == what.record_digest,
                ),
            ),
        )
        .order_by(DeadLetterRedrive.id)
    )
    return list(rows.scalars())


async def confirm(session: AsyncSession, redrive_id: int, partition: int, offset: int) -> None:
    """Kafka acknowledged the redriven record at `partition:offset`."""
    await session.execute(
        update(DeadLetterRedrive)
        .where(DeadLetterRedrive.id == redrive_id)
        .values(published_at=func.now(), published_partition=partition, published_offset=offset)
    )


async def fail(session: AsyncSession, redrive_id: int, failure: str) -> None:
    """Kafka did not acknowledge it: the claim no longer counts as a redrive."""
    await session.execute(
        update(DeadLetterRedrive)
        .where(DeadLetterRedrive.id == redrive_id)
        .values(failure=failure[:2000])
    )


async def of_dead_letters(
    session: AsyncSession, topic: str, positions: Sequence[tuple[int, int]] | None = None
) -> dict[tuple[int, int], list[DeadLetterRedrive]]:
    """Redrives of the dead letters of `topic` (only those at `positions` if given), by
    dead-letter position, oldest first."""
    query = select(DeadLetterRedrive).where(DeadLetterRedrive.dead_letter_topic == topic)
    if positions is not None:
        if not positions:
            return {}
        query = query.where(
            tuple_(
                DeadLetterRedrive.dead_letter_partition, DeadLetterRedrive.dead_letter_offset
            ).in_(list(positions))
        )
    rows = await session.execute(query.order_by(DeadLetterRedrive.id))
    out: dict[tuple[int, int], list[DeadLetterRedrive]] = {}
    for row in rows.scalars():
        out.setdefault((row.dead_letter_partition, row.dead_letter_offset), []).append(row)
    return out
