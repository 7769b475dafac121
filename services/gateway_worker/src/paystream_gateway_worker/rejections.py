"""A command dead-lettered after it was accepted must not vanish: it becomes `rejected`.

The ingest API answers 202 once Kafka has the command. If the worker then cannot store it
(a value PostgreSQL cannot hold, a limit only the worker checks for commands produced
straight to Kafka, a bug), the record goes to the dead-letter topic, and without this the
client's `GET /v1/transactions/{id}` would answer 404 forever. Whenever the record still
names a tenant, a transaction, an account, an amount and a currency, a `rejected`
transaction is stored in their place, with the dead-letter reason as its failure, and its
`rejected` outcome event goes out through the outbox like any other.

What is stored is only what is safe to store: identifiers that match their schema, the
amount as the record gave it (never posted: a rejected transaction moves no money), and
no metadata, payment method or destination, which may hold exactly what made the command
fail. A transaction that already exists (an idempotency conflict, a failure after it was
stored) is left as it is: it is visible already.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paystream_core.records import TransactionRecord
from paystream_core.statuses import Status, TransactionType
from paystream_core.transitions import transition
from paystream_gateway_worker.deps import WorkerDeps
from paystream_gateway_worker.execution import SOURCE
from paystream_messaging.commands import COMMAND_TYPES
from paystream_streams.records import RawRecord

log = logging.getLogger(__name__)

_ACCOUNT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_HASH = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[a-z0-9_.]{1,64}")
_BIGINT_MAX = 2**63 - 1
_MESSAGE_MAX = 1024
# These reasons never stand for a transaction of their own: the key names one that exists
# (conflict), or there is no tenant to store it under.
_NOT_FOR_REJECTION = ("idempotency_conflict", "unknown_tenant")


@dataclass(frozen=True, slots=True)
class Identified:
    """What a dead-lettered record says about the transaction it asked for."""

    tenant_id: uuid.UUID
    transaction: TransactionRecord


async def reject_dead_lettered(deps: WorkerDeps, record: RawRecord, reason: str) -> bool:
    """Store `record`'s transaction as `rejected` for `reason` when the record identifies
    one that does not exist yet; True when it did. Call it before the record is sent to
    the dead letters: a retry after a crash in between finds the transaction and does
    nothing twice."""
    code = reason.split(":", 1)[0].strip()
    if code.startswith(_NOT_FOR_REJECTION):
        return False
    found = identify(record)
    if found is None:
        return False
    txn = found.transaction
    message = _printable(f"the command was not processed and was dead-lettered: {reason}")
    now = datetime.now(UTC)
    async with deps.store.unit(found.tenant_id) as unit:
        if not await unit.tenant_exists():
            return False
        await unit.add_accounts([(txn.account_id, txn.country)])
        if txn.id not in await unit.add_transactions([txn]):
            return False
        move = transition(
            txn,
            Status.REJECTED,
            at=now,
            failure=(code if _CODE.fullmatch(code) else "dead_lettered", message[:_MESSAGE_MAX]),
        )
        assert move is not None  # received -> rejected is always allowed
        await unit.apply([move], source=SOURCE)
    deps.metrics.commands.labels("rejected_dead_lettered").inc()
    log.info("transaction %s rejected: its command was dead-lettered (%s)", txn.id, code)
    return True


def identify(record: RawRecord) -> Identified | None:
    """The transaction a command record names, read leniently (the record may be exactly
    what failed validation); None unless every field a transaction needs is valid."""
    event_type, data = _type_and_data(record)
    command = COMMAND_TYPES.get(event_type or "")
    if command is None or not isinstance(data, dict):
        return None
    try:
        tenant = uuid.UUID(str(data["tenant_id"]))
        txn_id = uuid.UUID(str(data["transaction_id"]))
        account, country = data["account_id"], data["country"]
        currency, amount = data["currency"], data["amount_minor"]
        key, digest = data["idempotency_key"], data["payload_hash"]
    except (KeyError, ValueError, TypeError):
        return None
    valid = (
        isinstance(account, str)
        and _ACCOUNT.fullmatch(account)
        and isinstance(country, str)
        and _COUNTRY.fullmatch(country)
        and isinstance(currency, str)
        and _CURRENCY.fullmatch(currency)
        and type(amount) is int
        and 0 < amount <= _BIGINT_MAX
        and isinstance(key, str)
        and 1 <= len(key) <= 255
        and key.isprintable()
        and isinstance(digest, str)
        and _HASH.fullmatch(digest)
    )
    if not valid:
        return None
    return Identified(
        tenant,
        TransactionRecord(
            id=txn_id,
            tenant_id=tenant,
            account_id=account,
            type=TransactionType(command.KIND),
            status=Status.RECEIVED,
            version=1,
            amount_minor=amount,
            currency=currency,
            country=country,
            idempotency_key=key,
            payload_hash=digest,
            payment_method=None,
            metadata={},
        ),
    )


def _type_and_data(record: RawRecord) -> tuple[str | None, Any]:
    headers = {k.lower(): v for k, v in record.headers}
    try:
        value = json.loads(record.value or b"")
    except (ValueError, UnicodeDecodeError):
        return None, None
    content_type = headers.get("content-type", b"").decode("latin-1").lower()
    if content_type.startswith("application/cloudevents+json"):  # structured mode
        if not isinstance(value, dict):
            return None, None
        kind = value.get("type")
        return (kind if isinstance(kind, str) else None), value.get("data")
    kind_header = headers.get("ce_type")
    return (kind_header.decode("latin-1") if kind_header else None), value


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
