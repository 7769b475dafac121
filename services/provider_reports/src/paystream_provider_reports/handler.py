"""One callback record: decode, dedupe (inbox), apply, or park it until its attempt exists.

Inbox row, state change, ledger postings and outcome event commit together, so a
redelivered or duplicated callback (same provider event id) finds the inbox row and
changes nothing. Infrastructure errors are retried without limit (the offset never passes
a callback that was not handled); anything else goes to the dead-letter topic after a few
tries, as in the gateway worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_callback_worker.apply import (
    Report,
    apply_outcome,
    find_attempt,
    lock_for_report,
    record_anomaly,
)
from paystream_callback_worker.deps import CallbackDeps
from paystream_gateways.callbacks import callback_gateway
from paystream_gateways.errors import CallbackRejected, ConnectionNotFound
from paystream_gateways.protocol import CallbackEvent
from paystream_messaging.async_publisher import PublishFailed
from paystream_messaging.callbacks import CallbackReceived, decode_body
from paystream_messaging.cloudevents_codec import InvalidEvent, decode
from paystream_storage.db import tenant_session
from paystream_storage.models import InboxMessage, ParkedCallback
from paystream_streams.records import RawRecord

log = logging.getLogger(__name__)

CONSUMER = "callback-worker"
_DUE = text("SELECT tenant_id, parked_id FROM paystream_parked_callbacks_due(:limit)")
SOURCE = "/paystream/callback-worker"
MAX_UNEXPECTED_FAILURES = 5


def inbox_id(connection_id: uuid.UUID, event_id: str) -> str:
    """Provider event ids are unique per provider account, i.e. per connection."""
    raw = f"{connection_id}:{event_id}"
    return (
        raw
        if len(raw) <= 255
        else f"{connection_id}:sha256:{hashlib.sha256(raw.encode()).hexdigest()}"
    )


async def handle(deps: CallbackDeps, record: RawRecord) -> str:
    failures = 0
    delay = 0.2
    deps.metrics.in_flight.inc()
    try:
        while True:
            try:
                result = await process(deps, record)
                deps.metrics.progressed()
                return result
            except (OperationalError, InterfaceError, PublishFailed, OSError) as exc:
                log.warning("callback at %s[%d]@%d: %s; retrying in %.1fs",
                            record.topic, record.partition, record.offset, exc, delay)  # fmt: skip
            except Exception as exc:
                failures += 1
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                log.exception("callback at %s failed (%d/%d)", where, failures,
                              MAX_UNEXPECTED_FAILURES)  # fmt: skip
                if failures >= MAX_UNEXPECTED_FAILURES:
                    await _dead_letter(
                        deps, record, f"processing_failed: {type(exc).__name__}: {exc}"[:2000]
                    )
                    return "dead_letter"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
    finally:
        deps.metrics.in_flight.dec()


async def process(deps: CallbackDeps, record: RawRecord) -> str:
    try:
        callback = CallbackReceived.from_event(
            decode(record.key, record.value, record.headers, deps.registry)
        )
    except InvalidEvent as exc:
        await _dead_letter(deps, record, f"invalid_event: {exc.reason}")
        return "dead_letter"
    try:
        _, gateway = await callback_gateway(
            deps.gateways, deps.connections, callback.tenant_id, callback.connection_id
        )
    except ConnectionNotFound:
        await _dead_letter(deps, record, f"unknown_connection: {callback.connection_id}")
        return "dead_letter"
    try:
        event = gateway.parse_callback(callback.body)
    except CallbackRejected as exc:
        result = "ignored" if exc.reason == "unsupported" else "malformed"
        if result == "malformed":  # verified at the ingress, unreadable here: keep it
            async with tenant_session(deps.sessions, callback.tenant_id) as session:
                report = Report(SOURCE, "callback", callback.connection_id)
                await record_anomaly(session, deps.metrics, txn=None, report=report,
                                     kind="malformed_callback", detail=str(exc),
                                     tenant_id=callback.tenant_id)  # fmt: skip
        deps.metrics.callbacks.labels(callback.gateway, result).inc()
        return result
    async with tenant_session(deps.sessions, callback.tenant_id) as session:
        fresh = await session.execute(
            insert(InboxMessage)
            .values(
                consumer=CONSUMER,
                message_id=inbox_id(callback.connection_id, event.event_id),
                tenant_id=callback.tenant_id,
            )
            .on_conflict_do_nothing()
            .returning(InboxMessage.message_id)
        )
        if fresh.first() is None:
            result = "duplicate"
        else:
            applied = await apply_in_session(deps, session, callback.connection_id, event)
            result = applied or "parked"
            if applied is None:
                await _park(session, callback, event)
                deps.metrics.parked.labels("parked").inc()
    deps.metrics.callbacks.labels(callback.gateway, result).inc()
    return result


async def apply_in_session(
    deps: CallbackDeps, session: AsyncSession, connection_id: uuid.UUID, event: CallbackEvent
) -> str | None:
    """Apply `event` to its transaction; None when its attempt is not known (an orphan)."""
    attempt = await find_attempt(session, connection_id, event.reference, event.provider_reference)
    if attempt is None:
        return None
    txn, attempt, latest = await lock_for_report(session, attempt)
    applied = await apply_outcome(
        session, deps.registry, deps.metrics, txn=txn, attempt=attempt, latest_seq=latest,
        outcome=event.outcome, kind=event.kind,
        report=Report(SOURCE, "callback", connection_id, event.event_id),
    )  # fmt: skip
    return applied.result


async def _park(session: AsyncSession, callback: CallbackReceived, event: CallbackEvent) -> None:
    body, encoding = callback.encoded_body()
    await session.execute(
        insert(ParkedCallback)
        .values(
            tenant_id=callback.tenant_id,
            connection_id=callback.connection_id,
            gateway_code=callback.gateway,
            provider_event_id=event.event_id[:255],
            provider_reference=(event.provider_reference or None),
            reference=event.reference,
            body=body,
            body_encoding=encoding,
            received_at=callback.received_at,
        )
        .on_conflict_do_nothing()
    )
    log.info("callback %s (%s) has no known attempt yet: parked", event.event_id,
             event.provider_reference or event.reference)  # fmt: skip


async def retry_parked(
    deps: CallbackDeps, *, base_s: float, max_s: float, limit: int = 200
) -> dict[str, int]:
    """One sweep over the parked callbacks that are due; returns counts by result."""
    async with tenant_session(deps.sessions, None) as session:
        due = (await session.execute(_DUE, {"limit": limit})).all()
    counts: dict[str, int] = {}
    for tenant_id, parked_id in due:
        result = await _retry_one(deps, tenant_id, parked_id, base_s, max_s)
        counts[result] = counts.get(result, 0) + 1
    return counts


async def _retry_one(
    deps: CallbackDeps, tenant_id: uuid.UUID, parked_id: int, base_s: float, max_s: float
) -> str:
    async with tenant_session(deps.sessions, tenant_id) as session:
        parked = (
            await session.execute(
                select(ParkedCallback)
                .where(ParkedCallback.id == parked_id, ParkedCallback.resolved_at.is_(None))
                .with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if parked is None:
            return "taken"  # another worker has it, or it was resolved meanwhile
        now = datetime.now(UTC)
        try:
            _, gateway = await callback_gateway(
                deps.gateways, deps.connections, tenant_id, parked.connection_id
            )
            event = gateway.parse_callback(decode_body(parked.body, parked.body_encoding))
        except (CallbackRejected, ConnectionNotFound, InvalidEvent) as exc:
            parked.resolved_at, parked.resolution = now, "unreadable"
            log.error("parked callback %s can no longer be read: %s", parked.id, exc)
            return "unreadable"
        result = await apply_in_session(deps, session, parked.connection_id, event)
        if result is None:
            parked.tries += 1
            wait = min(base_s * 2 ** min(parked.tries - 1, 20), max_s)
            parked.next_try_at = now + timedelta(seconds=wait)
            return "still_orphan"
        parked.resolved_at, parked.resolution = now, result
        deps.metrics.parked.labels("applied").inc()
        log.info("parked callback %s applied: %s", parked.provider_event_id, result)
        return result


async def _dead_letter(deps: CallbackDeps, record: RawRecord, reason: str) -> None:
    log.warning(
        "dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
    )
    await deps.dead_letters.send(record, reason)
    deps.metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()
