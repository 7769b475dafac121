"""Callback records: decode, dedupe (inbox), apply, or park them until their attempt exists.

Inbox rows, state changes, ledger postings and outcome events commit together, one
database transaction per tenant in the batch, so a redelivered or duplicated callback
(same provider event id) finds its inbox row and changes nothing. Infrastructure errors are
retried without limit (the offset never passes a callback that was not handled); anything
else goes to the dead-letter topic after a few tries, as in the gateway worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from paystream_core.ports import AnomalyRecord, AttemptKey, ParkedCallback, PaymentUnit
from paystream_gateways.callbacks import callback_gateway
from paystream_gateways.errors import CallbackRejected, ConnectionNotFound
from paystream_gateways.protocol import CallbackEvent
from paystream_messaging.async_publisher import PublishFailed
from paystream_messaging.callbacks import CallbackReceived, decode_body
from paystream_messaging.cloudevents_codec import InvalidEvent, decode
from paystream_provider_reports.apply import (
    Incoming,
    Source,
    apply_reports,
    unattached_anomaly,
)
from paystream_provider_reports.deps import CallbackDeps
from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_streams.batching import Batches
from paystream_streams.handling import Retry, dead_letter, handle_record
from paystream_streams.records import RawRecord
from paystream_telemetry.messages import MessageSpans

log = logging.getLogger(__name__)

CONSUMER = "callback-worker"
SOURCE = Source("/paystream/callback-worker", "callback")
# Down infrastructure comes back: the database, Kafka (dead letters), the network.
RETRY = Retry(transient=(*TRANSIENT_DB_ERRORS, PublishFailed, OSError))


def inbox_id(connection_id: uuid.UUID, event_id: str) -> str:
    """Provider event ids are unique per provider account, i.e. per connection."""
    raw = f"{connection_id}:{event_id}"
    return (
        raw
        if len(raw) <= 255
        else f"{connection_id}:sha256:{hashlib.sha256(raw.encode()).hexdigest()}"
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    """A callback the adapter could read, ready to apply."""

    index: int
    callback: CallbackReceived
    event: CallbackEvent


async def take_in(deps: CallbackDeps, batches: Batches) -> None:
    """The batch handler: runs until the worker stops. A batch that fails for any reason is
    retried record by record, so a poison record goes to the dead letters alone."""
    while True:
        events = await batches.batch()
        records = [RawRecord.of(e.message) for e in events]
        try:
            await process(deps, records)
        except Exception:
            log.exception("a batch of %d callbacks failed; one by one now", len(records))
            for record in records:
                await _one(deps, record)
        await batches.finish(events)


async def handle(deps: CallbackDeps, record: RawRecord) -> str:
    """One callback record; returns what became of it (for logs, metrics and tests)."""
    deps.metrics.in_flight.inc()
    try:
        result = await _one(deps, record)
        deps.metrics.progressed()
        return result
    finally:
        deps.metrics.in_flight.dec()


async def _one(deps: CallbackDeps, record: RawRecord) -> str:
    async def work() -> str:
        return (await process(deps, [record]))[0]

    result = await handle_record(
        record,
        work,
        retry=RETRY,
        dead_letters=deps.dead_letters,
        count_dead=deps.count_dead,
        what="callback",
    )
    return result if result is not None else "dead_letter"


async def process(deps: CallbackDeps, records: Sequence[RawRecord]) -> list[str]:
    """Handle a batch of callback records; one result per record, in order. Each callback
    is a span in the trace of its ingress request (the CloudEvent's traceparent)."""
    spans: MessageSpans[int] = MessageSpans("apply callback", len(records))
    try:
        results = await _process(deps, records, spans)
    except BaseException as exc:
        spans.fail(exc)
        raise
    if spans.recording:
        spans.end(dict(enumerate(results)), attribute="paystream.callback.result")
    return results


async def _process(
    deps: CallbackDeps, records: Sequence[RawRecord], spans: MessageSpans[int]
) -> list[str]:
    results = [""] * len(records)
    gateways: dict[int, str] = {}
    verified: dict[uuid.UUID, list[_Verified]] = {}
    malformed: dict[uuid.UUID, list[AnomalyRecord]] = {}
    for index, record in enumerate(records):
        try:
            cloud_event = decode(record.key, record.value, record.headers, deps.registry)
            callback = CallbackReceived.from_event(cloud_event)
        except InvalidEvent as exc:
            results[index] = await _dead_letter(deps, record, f"invalid_event: {exc.reason}")
            continue
        gateways[index] = callback.gateway
        spans.add(
            index,
            cloud_event.traceparent,
            {
                "paystream.gateway": callback.gateway,
                "paystream.tenant_id": callback.tenant_id,
                "paystream.connection_id": callback.connection_id,
            },
        )
        try:
            _, gateway = await callback_gateway(
                deps.gateways, deps.connections, callback.tenant_id, callback.connection_id
            )
        except ConnectionNotFound:
            reason = f"unknown_connection: {callback.connection_id}"
            results[index] = await _dead_letter(deps, record, reason)
            continue
        try:
            event = gateway.parse_callback(callback.body)
        except CallbackRejected as exc:
            if exc.reason == "unsupported":
                results[index] = "ignored"  # a valid event we do not use
                continue
            # Verified at the ingress, unreadable here: keep it for a human.
            results[index] = "malformed"
            anomaly = unattached_anomaly(
                deps.metrics,
                tenant_id=callback.tenant_id,
                connection_id=callback.connection_id,
                origin=SOURCE.origin,
                kind="malformed_callback",
                detail=str(exc),
            )
            malformed.setdefault(callback.tenant_id, []).append(anomaly)
            continue
        verified.setdefault(callback.tenant_id, []).append(_Verified(index, callback, event))
    for tenant_id in {*verified, *malformed}:
        async with deps.store.unit(tenant_id) as unit:
            await unit.add_anomalies(malformed.get(tenant_id, []))
            for item, result in await _apply(deps, unit, verified.get(tenant_id, [])):
                results[item.index] = result
    for index, result in enumerate(results):
        if index in gateways and result != "dead_letter":
            deps.metrics.callbacks.labels(gateways[index], result).inc()
    return results


async def _apply(
    deps: CallbackDeps, unit: PaymentUnit, items: Sequence[_Verified]
) -> list[tuple[_Verified, str]]:
    """Dedupe on the inbox, apply the fresh ones, park the orphans."""
    if not items:
        return []
    ids = [inbox_id(i.callback.connection_id, i.event.event_id) for i in items]
    fresh = await unit.first_seen(CONSUMER, ids)
    firsts: list[_Verified] = []
    out: list[tuple[_Verified, str]] = []
    for item, message_id in zip(items, ids, strict=True):
        if message_id in fresh:
            fresh.discard(message_id)  # a second copy in the same batch is a duplicate
            firsts.append(item)
        else:
            out.append((item, "duplicate"))
    applied = await apply_reports(unit, deps.metrics, SOURCE, [_incoming(i) for i in firsts])
    orphans = []
    for item, result in zip(firsts, applied, strict=True):
        if result is None:
            orphans.append(_parked(item))
            out.append((item, "parked"))
            deps.metrics.parked.labels("parked").inc()
            log.info(
                "callback %s (%s) has no known attempt yet: parked",
                item.event.event_id,
                item.event.provider_reference or item.event.reference,
            )
        else:
            out.append((item, result.applied.value))
    await unit.park(orphans)
    return out


def _incoming(item: _Verified) -> Incoming:
    event = item.event
    key = AttemptKey(item.callback.connection_id, event.reference, event.provider_reference)
    return Incoming(key, event.outcome, event.kind, event.event_id)


def _parked(item: _Verified) -> ParkedCallback:
    body, encoding = item.callback.encoded_body()
    return ParkedCallback(
        tenant_id=item.callback.tenant_id,
        connection_id=item.callback.connection_id,
        gateway_code=item.callback.gateway,
        provider_event_id=item.event.event_id[:255],
        provider_reference=item.event.provider_reference or None,
        reference=item.event.reference,
        body=body,
        body_encoding=encoding,
        received_at=item.callback.received_at,
    )


async def retry_parked(
    deps: CallbackDeps, *, base_s: float, max_s: float, limit: int = 200
) -> dict[str, int]:
    """One sweep over the parked callbacks that are due; returns counts by result."""
    async with deps.store.unit(None) as unit:
        due = await unit.parked_due(limit)
    counts: dict[str, int] = {}
    for tenant_id, parked_id in due:
        result = await _retry_one(deps, tenant_id, parked_id, base_s, max_s)
        counts[result] = counts.get(result, 0) + 1
    return counts


async def _retry_one(
    deps: CallbackDeps, tenant_id: uuid.UUID, parked_id: int, base_s: float, max_s: float
) -> str:
    async with deps.store.unit(tenant_id) as unit:
        parked = await unit.lock_parked(parked_id)
        if parked is None:
            return "taken"  # another worker has it, or it was resolved meanwhile
        now = datetime.now(UTC)
        try:
            _, gateway = await callback_gateway(
                deps.gateways, deps.connections, tenant_id, parked.connection_id
            )
            event = gateway.parse_callback(decode_body(parked.body, parked.body_encoding))
        except (CallbackRejected, ConnectionNotFound, InvalidEvent) as exc:
            await unit.save_parked(
                dataclasses.replace(parked, resolved_at=now, resolution="unreadable")
            )
            log.error("parked callback %s can no longer be read: %s", parked.id, exc)
            return "unreadable"
        key = AttemptKey(parked.connection_id, event.reference, event.provider_reference)
        [applied] = await apply_reports(
            unit, deps.metrics, SOURCE, [Incoming(key, event.outcome, event.kind, event.event_id)]
        )
        if applied is None:
            tries = parked.tries + 1
            wait = min(base_s * 2 ** min(tries - 1, 20), max_s)
            await unit.save_parked(
                dataclasses.replace(parked, tries=tries, next_try_at=now + timedelta(seconds=wait))
            )
            return "still_orphan"
        result = applied.applied.value
        await unit.save_parked(dataclasses.replace(parked, resolved_at=now, resolution=result))
        deps.metrics.parked.labels("applied").inc()
        log.info("parked callback %s applied: %s", parked.provider_event_id, result)
        return result


async def _dead_letter(deps: CallbackDeps, record: RawRecord, reason: str) -> str:
    await dead_letter(deps.dead_letters, record, reason, deps.count_dead)
    return "dead_letter"
