"""Moving a transaction: status, ledger and outcome event in the caller's DB transaction.

Shared by the gateway worker, the callback worker and the reconciler so that every path
applies the same forward-only state machine, the same postings and the same event shape.
The caller holds the transaction row lock (`lock_transaction`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_core.ids import outcome_event_id
from paystream_core.ledger import Bucket, MoneyEvent, legs
from paystream_core.statuses import Status, can_move
from paystream_messaging.schemas import SchemaRegistry
from paystream_messaging.topics import OUTCOMES
from paystream_storage.models import Balance, LedgerEntry, Transaction
from paystream_storage.outbox import add_event


class InsufficientFunds(Exception):
    pass


async def lock_transaction(session: AsyncSession, txn_id: uuid.UUID) -> Transaction | None:
    result = await session.execute(
        select(Transaction).where(Transaction.id == txn_id).with_for_update()
    )
    return result.scalar_one_or_none()


async def post(session: AsyncSession, txn: Transaction, event: MoneyEvent) -> None:
    """Write the legs of `event` and update the account's balance row.

    Raises InsufficientFunds when a leg would take `available` or `held` below zero.
    """
    deltas = {Bucket.AVAILABLE: 0, Bucket.HELD: 0}
    for leg in legs(event, txn.amount_minor):
        session.add(
            LedgerEntry(
                tenant_id=txn.tenant_id,
                transaction_id=txn.id,
                account_id=txn.account_id,
                bucket=leg.bucket.value,
                currency=txn.currency,
                amount_minor=leg.amount_minor,
            )
        )
        if leg.bucket in deltas:
            deltas[leg.bucket] += leg.amount_minor
    await session.execute(
        insert(Balance)
        .values(tenant_id=txn.tenant_id, account_id=txn.account_id, currency=txn.currency)
        .on_conflict_do_nothing()
    )
    result = await session.execute(
        update(Balance)
        .where(
            Balance.tenant_id == txn.tenant_id,
            Balance.account_id == txn.account_id,
            Balance.currency == txn.currency,
            Balance.available_minor + deltas[Bucket.AVAILABLE] >= 0,
            Balance.held_minor + deltas[Bucket.HELD] >= 0,
        )
        .values(
            available_minor=Balance.available_minor + deltas[Bucket.AVAILABLE],
            held_minor=Balance.held_minor + deltas[Bucket.HELD],
            updated_at=datetime.now(UTC),
        )
    )
    if getattr(result, "rowcount", 0) != 1:
        raise InsufficientFunds(f"{txn.account_id} {txn.currency}: {event} of {txn.amount_minor}")


def _money_event(txn: Transaction, new: Status, old: Status) -> MoneyEvent | None:
    """The posting a status change implies (the hold itself is posted on acceptance)."""
    if txn.type == "deposit":
        return MoneyEvent.DEPOSIT_CREDITED if new == Status.SUCCEEDED else None
    if new == Status.SUCCEEDED:
        return MoneyEvent.WITHDRAWAL_SETTLED
    held = old != Status.RECEIVED  # a withdrawal rejected before its hold holds nothing
    if new in (Status.FAILED, Status.REJECTED) and held:
        return MoneyEvent.WITHDRAWAL_RELEASED
    return None


async def move(
    session: AsyncSession,
    registry: SchemaRegistry,
    txn: Transaction,
    new: Status,
    *,
    source: str,
    gateway: str | None = None,
    provider_reference: str | None = None,
    failure: tuple[str, str] | None = None,
    redirect_url: str | None = None,
) -> bool:
    """Apply `new` if the state machine allows it; False (and no change) otherwise."""
    old = Status(txn.status)
    if not can_move(old, new):
        return False
    money = _money_event(txn, new, old)
    if money is not None:
        await post(session, txn, money)
    now = datetime.now(UTC)
    txn.status = new.value
    txn.version += 1
    txn.updated_at = now
    if gateway is not None:
        txn.gateway_code = gateway
    if provider_reference is not None:
        txn.provider_reference = provider_reference
    if failure is not None:
        txn.failure_code, txn.failure_message = failure
    await session.flush()
    emit(session, registry, txn, source=source, redirect_url=redirect_url, at=now)
    return True


def emit(
    session: AsyncSession,
    registry: SchemaRegistry,
    txn: Transaction,
    *,
    source: str,
    at: datetime,
    redirect_url: str | None = None,
) -> None:
    """The outcome event of the transaction's current version, via the outbox."""
    data: dict[str, Any] = {
        "transaction_id": str(txn.id),
        "tenant_id": str(txn.tenant_id),
        "account_id": txn.account_id,
        "type": txn.type,
        "status": txn.status,
        "version": txn.version,
        "amount_minor": txn.amount_minor,
        "currency": txn.currency,
        "gateway": txn.gateway_code,
        "provider_reference": txn.provider_reference,
        "failure": (
            {"code": txn.failure_code, "message": (txn.failure_message or txn.failure_code)[:1024]}
            if txn.failure_code and txn.status in ("failed", "rejected")
            else None
        ),
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }
    if txn.status == "action_required":
        data["redirect_url"] = redirect_url
    add_event(
        session,
        registry,
        tenant_id=txn.tenant_id,
        topic=OUTCOMES,
        key=txn.account_id,
        event_id=outcome_event_id(txn.id, txn.version),
        event_type=f"paystream.transaction.{txn.status}.v1",
        source=source,
        occurred_at=at,
        data=data,
    )
