"""The ingest use cases: accept a command, read a transaction, read balances.

Thin on purpose: no gateway work here. A command is answered 202 only after Kafka
acknowledged it; the worker stores it and does the rest.
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from paystream_core.ids import payload_hash, transaction_id
from paystream_core.money import Money
from paystream_ingest_api.deps import IngestDeps
from paystream_ingest_api.problems import Problem
from paystream_ingest_api.requests import DepositRequest, WithdrawalRequest
from paystream_messaging import topics
from paystream_messaging.async_publisher import PublishFailed
from paystream_messaging.cloudevents_codec import encode
from paystream_messaging.commands import (
    Command,
    RequestDeposit,
    RequestWithdrawal,
    SealedDestination,
)
from paystream_storage.db import tenant_session
from paystream_storage.idempotency import reserve_idempotency_key
from paystream_storage.models import Account, Attempt, Balance, Transaction
from paystream_telemetry.logs import log_context
from paystream_telemetry.tracing import span, traceparent_of, tracing_on

log = logging.getLogger(__name__)

SOURCE = "/paystream/ingest-api"


async def accept_command(
    deps: IngestDeps,
    tenant: uuid.UUID,
    idempotency_key: str,
    kind: str,
    request: DepositRequest,
    traceparent: str | None,
) -> dict[str, Any]:
    txn_id = transaction_id(tenant, idempotency_key)
    with log_context(tenant=tenant, transaction=txn_id, traceparent=traceparent):
        return await _accept(deps, tenant, idempotency_key, kind, request, traceparent, txn_id)


async def _accept(
    deps: IngestDeps,
    tenant: uuid.UUID,
    idempotency_key: str,
    kind: str,
    request: DepositRequest,
    traceparent: str | None,
    txn_id: uuid.UUID,
) -> dict[str, Any]:
    # The destination enters the hash only as its mask: cleartext bank details are never
    # stored, not even hashed.
    fingerprint = request.model_dump(mode="json", exclude_none=True, exclude={"destination"})
    if isinstance(request, WithdrawalRequest):
        fingerprint["destination"] = request.destination.masked()
    digest = payload_hash({"type": kind, **fingerprint})

    # One statement: binds the key to this body, or says what it is bound to.
    bound = await reserve_idempotency_key(deps.pool, tenant, idempotency_key, digest, txn_id)
    if bound.payload_hash != digest:
        deps.metrics.replays.labels("conflict").inc()
        raise Problem(
            "idempotency-conflict",
            f"Idempotency-Key {idempotency_key!r} was used for a different request",
            transaction_id=str(txn_id),
        )
    if bound.status is not None:
        deps.metrics.replays.labels("stored").inc()
        return _accepted(txn_id, replay=True, status=bound.status, version=bound.version)

    fields: dict[str, Any] = {
        "transaction_id": txn_id,
        "tenant_id": tenant,
        "idempotency_key": idempotency_key,
        "payload_hash": digest,
        "account_id": request.account_id,
        "country": request.country,
        "amount_minor": request.money.amount_minor,
        "currency": request.currency,
        "requested_at": datetime.now(UTC),
        "payment_method": request.payment_method,
        "metadata": dict(request.metadata or {}),
    }
    command: Command
    if isinstance(request, WithdrawalRequest):
        sealed = deps.seal_destination(
            tenant, txn_id, request.destination.model_dump_json(exclude_none=True).encode()
        )
        destination = SealedDestination(
            base64.b64decode(sealed.ciphertext_b64), sealed.key_id, request.destination.masked()
        )
        command = RequestWithdrawal(**fields, destination=destination)
    else:
        command = RequestDeposit(**fields)
    topic = deps.settings.topic(topics.COMMANDS)
    attributes = (
        {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "paystream.tenant_id": str(tenant),
            "paystream.transaction_id": str(txn_id),
        }
        if tracing_on()
        else None
    )
    with span(f"publish {topic}", kind="producer", attributes=attributes) as publishing:
        # Traced, the command carries the publish span's context (the request's span,
        # itself the child of the client's traceparent, is its parent); untraced, the
        # client's traceparent travels as it came.
        carried = traceparent_of(publishing) if publishing is not None else traceparent
        event = command.to_event(source=SOURCE, traceparent=carried)
        record = encode(event, deps.registry)
        timeout_s = deps.settings.ingest_publish_timeout_ms / 1000
        try:
            await deps.publisher.publish(topic, record, deadline_s=timeout_s + 2)
        except PublishFailed as exc:
            deps.metrics.publish_failures.labels(str(exc.maybe_persisted).lower()).inc()
            log.warning("command %s not acknowledged by Kafka: %s", txn_id, exc.reason)
            raise Problem(
                "broker-unavailable",
                "the command could not be published; retry with the same Idempotency-Key",
                headers={"Retry-After": str(deps.settings.ingest_retry_after_s)},
            ) from exc
    deps.metrics.commands.labels(kind).inc()
    log.debug("%s %s accepted", kind, txn_id)
    return _accepted(txn_id, replay=False)


def _accepted(
    txn_id: uuid.UUID, *, replay: bool, status: str | None = None, version: int | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_id": str(txn_id),
        "status": "accepted",
        "idempotent_replay": replay,
        "links": {"self": f"/v1/transactions/{txn_id}"},
    }
    if status is not None:
        body["transaction_status"] = status
        body["version"] = version
    return body


async def transaction_snapshot(
    deps: IngestDeps, tenant: uuid.UUID, txn_id: uuid.UUID
) -> dict[str, Any]:
    async with tenant_session(deps.sessions, tenant) as session:
        txn = await session.get(Transaction, txn_id)
        if txn is None:
            raise Problem(
                "not-found",
                f"no transaction {txn_id} (a just-accepted one appears once the worker stored it)",
            )
        attempts = (
            await session.execute(
                select(Attempt).where(Attempt.transaction_id == txn_id).order_by(Attempt.seq)
            )
        ).scalars()
        return {
            "transaction_id": str(txn.id),
            "type": txn.type,
            "status": txn.status,
            "version": txn.version,
            "account_id": txn.account_id,
            "country": txn.country,
            "amount": Money(txn.amount_minor, txn.currency).format(),
            "amount_minor": txn.amount_minor,
            "currency": txn.currency,
            "payment_method": txn.payment_method,
            "metadata": txn.metadata_,
            "destination": {"masked": txn.destination_masked} if txn.destination_masked else None,
            "gateway": txn.gateway_code,
            "provider_reference": txn.provider_reference,
            "failure": (
                {"code": txn.failure_code, "message": txn.failure_message}
                if txn.failure_code
                else None
            ),
            "attempts": [
                {
                    "seq": a.seq,
                    "gateway": a.gateway_code,
                    "status": a.status,
                    "provider_reference": a.provider_reference,
                    "error": (
                        {"class": a.error_class, "code": a.error_code, "message": a.error_message}
                        if a.error_class
                        else None
                    ),
                    "route_reason": a.route_reason,
                    "started_at": a.started_at.isoformat(),
                    "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                }
                for a in attempts
            ],
            "created_at": txn.created_at.isoformat(),
            "updated_at": txn.updated_at.isoformat(),
        }


async def account_balances(deps: IngestDeps, tenant: uuid.UUID, account_id: str) -> dict[str, Any]:
    async with tenant_session(deps.sessions, tenant) as session:
        account = await session.get(Account, (tenant, account_id))
        if account is None:
            raise Problem("not-found", f"no account {account_id!r}")
        rows = (
            await session.execute(
                select(Balance)
                .where(Balance.tenant_id == tenant, Balance.account_id == account_id)
                .order_by(Balance.currency)
            )
        ).scalars()
        return {
            "account_id": account_id,
            "country": account.country,
            "balances": [
                {
                    "currency": b.currency,
                    "available": Money(b.available_minor, b.currency).format(),
                    "held": Money(b.held_minor, b.currency).format(),
                    "available_minor": b.available_minor,
                    "held_minor": b.held_minor,
                }
                for b in rows
            ],
        }
