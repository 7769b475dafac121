"""A status change of one transaction, computed without touching storage.

The storage layer applies a `Transition` atomically: the new row, the ledger legs of its
money event and the outcome event of the new version, in one database transaction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from paystream_core.ledger import MoneyEvent, posting
from paystream_core.records import TransactionRecord
from paystream_core.statuses import Status, can_move


@dataclass(frozen=True, slots=True)
class Transition:
    before: TransactionRecord
    after: TransactionRecord
    money: MoneyEvent | None
    at: datetime
    redirect_url: str | None = None  # only on an action_required outcome event

    @property
    def hold(self) -> bool:
        """A withdrawal's hold is the one posting that may be refused (insufficient funds)."""
        return self.money == MoneyEvent.WITHDRAWAL_HELD


def transition(
    txn: TransactionRecord,
    new: Status,
    *,
    at: datetime,
    gateway: str | None = None,
    provider_reference: str | None = None,
    failure: tuple[str, str] | None = None,
    redirect_url: str | None = None,
) -> Transition | None:
    """The move of `txn` to `new`, or None when the state machine forbids it."""
    if not can_move(txn.status, new):
        return None
    after = dataclasses.replace(
        txn,
        status=new,
        version=txn.version + 1,
        updated_at=at,
        gateway_code=gateway if gateway is not None else txn.gateway_code,
        provider_reference=(
            provider_reference if provider_reference is not None else txn.provider_reference
        ),
        failure_code=failure[0] if failure is not None else txn.failure_code,
        failure_message=failure[1] if failure is not None else txn.failure_message,
    )
    money = posting(txn.type, txn.status, new)
    return Transition(
        txn, after, money, at, redirect_url if new == Status.ACTION_REQUIRED else None
    )
