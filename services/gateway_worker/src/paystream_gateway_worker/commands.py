"""Command intake: decode, store idempotently, hold funds, route or reject (one DB tx)."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_core.ledger import MoneyEvent
from paystream_core.statuses import Status
from paystream_gateway_worker import routing
from paystream_gateway_worker.deps import RawRecord, WorkerDeps
from paystream_messaging.cloudevents_codec import Event, InvalidEvent, decode
from paystream_storage.db import tenant_session
from paystream_storage.models import Account, Tenant, Transaction
from paystream_storage.transitions import InsufficientFunds, lock_transaction, move, post

log = logging.getLogger(__name__)

SOURCE = "/paystream/gateway-worker"
KINDS = {
    "paystream.deposit.requested.v1": "deposit",
    "paystream.withdrawal.requested.v1": "withdrawal",
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """The command's transaction exists; `tenant_id`/`transaction_id` say which."""

    tenant_id: uuid.UUID
    transaction_id: uuid.UUID


async def intake(deps: WorkerDeps, record: RawRecord) -> Accepted | None:
    """Store the command's transaction (or find it again on redelivery).

    Returns None when the record went to the dead-letter topic instead.
    """
    try:
        event = decode(record.key, record.value, record.headers, deps.registry)
        kind = KINDS.get(event.type)
        if kind is None:
            raise InvalidEvent(f"{event.type} is not a command this worker handles")
    except InvalidEvent as exc:
        await _dead_letter(deps, record, f"invalid_event: {exc.reason}")
        return None
    data = event.data
    tenant_id = uuid.UUID(data["tenant_id"])
    txn_id = uuid.UUID(data["transaction_id"])
    async with tenant_session(deps.sessions, tenant_id) as session:
        if await session.get(Tenant, tenant_id) is None:
            problem: str | None = f"unknown_tenant: no tenant {tenant_id}"
        else:
            problem = await _store(deps, session, event, kind, txn_id, tenant_id)
    if problem is not None:
        await _dead_letter(deps, record, problem)
        return None
    return Accepted(tenant_id, txn_id)


async def _store(
    deps: WorkerDeps,
    session: AsyncSession,
    event: Event,
    kind: str,
    txn_id: uuid.UUID,
    tenant_id: uuid.UUID,
) -> str | None:
    data = event.data
    existing = await lock_transaction(session, txn_id)
    if existing is not None:
        if existing.payload_hash != data["payload_hash"]:
            # Same tenant + key, other body: the stored transaction is untouched.
            return (
                f"idempotency_conflict: key {data['idempotency_key']!r} already names"
                f" transaction {txn_id} with another payload"
            )
        return None  # redelivery: execution resumes from the stored state
    destination = data.get("destination")
    try:
        ciphertext = base64.b64decode(destination["ciphertext"]) if destination else None
    except (binascii.Error, ValueError):
        return "invalid_event: destination ciphertext is not base64"
    await session.execute(
        insert(Account)
        .values(tenant_id=tenant_id, id=data["account_id"], country=data["country"])
        .on_conflict_do_nothing()
    )
    txn = Transaction(
        id=txn_id,
        tenant_id=tenant_id,
        account_id=data["account_id"],
        type=kind,
        status=Status.RECEIVED.value,
        version=1,
        amount_minor=data["amount_minor"],
        currency=data["currency"],
        country=data["country"],
        idempotency_key=data["idempotency_key"],
        payload_hash=data["payload_hash"],
        payment_method=data.get("payment_method"),
        metadata_=dict(data.get("metadata") or {}),
        destination_ciphertext=ciphertext,
        destination_key_id=destination["key_id"] if destination else None,
        destination_masked=destination["masked"] if destination else None,
    )
    session.add(txn)
    await session.flush()
    await _accept_or_reject(deps, session, txn)
    return None


async def _accept_or_reject(deps: WorkerDeps, session: AsyncSession, txn: Transaction) -> None:
    routes = await routing.candidates(
        session,
        tenant_id=txn.tenant_id,
        country=txn.country,
        kind=txn.type,
        currency=txn.currency,
        amount_minor=txn.amount_minor,
    )
    if not routes:
        detail = f"no enabled gateway for {txn.type} in {txn.country} ({txn.currency})"
        await _reject(deps, session, txn, "no_gateway_available", detail)
        return
    if txn.type == "withdrawal":
        try:
            async with session.begin_nested():
                await post(session, txn, MoneyEvent.WITHDRAWAL_HELD)
        except InsufficientFunds:
            await _reject(deps, session, txn, "insufficient_funds",
                          "available balance is lower than the withdrawal")  # fmt: skip
            return
    await move(session, deps.registry, txn, Status.PROCESSING, source=SOURCE)
    deps.metrics.commands.labels("accepted").inc()


async def _reject(
    deps: WorkerDeps, session: AsyncSession, txn: Transaction, code: str, message: str
) -> None:
    await move(session, deps.registry, txn, Status.REJECTED, source=SOURCE, failure=(code, message))
    deps.metrics.commands.labels(f"rejected_{code}").inc()
    log.info("transaction %s rejected: %s", txn.id, code)


async def _dead_letter(deps: WorkerDeps, record: RawRecord, reason: str) -> None:
    log.warning(
        "dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
    )
    await deps.dead_letters.send(record, reason)
    deps.metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()


def destination_of(deps: WorkerDeps, txn: Transaction) -> dict[str, Any] | None:
    """The cleartext bank details of a withdrawal, for the provider call only."""
    if txn.destination_ciphertext is None or txn.destination_key_id is None:
        return None
    import json

    from paystream_gateways.credentials import Sealed

    cleartext = deps.keyring.open(
        txn.tenant_id, txn.id, Sealed(txn.destination_key_id, txn.destination_ciphertext)
    )
    value: dict[str, Any] = json.loads(cleartext)
    return value
