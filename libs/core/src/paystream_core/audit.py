"""The money audit: which checks exist, what each one's violations say, and what the ledger
rules expect a transaction's legs to net to.

The checks themselves are set-based SQL (`paystream_storage.audit`, migration 0011); they
return plain columns, which `violation` turns into a message that names the transaction
or the account, so an operator can go straight to it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from paystream_core.ledger import Bucket, legs, posting
from paystream_core.statuses import Status, TransactionType, can_move


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # the SQL function is paystream_audit_<name>; the metric's label
    title: str
    scope: str  # what one violation is about


CHECKS = (
    Check("ledger_sums", "ledger entries sum to zero", "transaction, currency"),
    Check("balances_match_entries", "balances equal their entries", "account, currency"),
    Check("balances_nonnegative", "no balance below zero", "account, currency"),
    Check("postings_match_status", "entries match the status", "transaction"),
    Check("terminal_events", "one terminal outcome event", "transaction"),
    Check("last_event_matches", "status matches the last event", "transaction"),
    Check("stuck_transactions", "nothing stuck past the horizons", "transaction"),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


@dataclass(frozen=True, slots=True)
class Horizons:
    """The reconciler's horizons (ReconcilerSettings): past them a transaction is stuck."""

    horizon_s: float  # pending/unknown/action_required this long after creation
    stuck_processing_s: float  # received/processing unchanged this long


class AuditCounts(Protocol):
    """Where the audit's counts come from (PostgreSQL in production, a fake in tests)."""

    async def counts(self, horizons: Horizons) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    message: str
    tenant_id: uuid.UUID | None
    transaction_id: uuid.UUID | None
    account_id: str | None
    currency: str | None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "message": self.message,
            "tenant_id": _text(self.tenant_id),
            "transaction_id": _text(self.transaction_id),
            "account_id": self.account_id,
            "currency": self.currency,
            "facts": {k: _plain(v) for k, v in self.facts.items()},
        }


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return int(value) if int(value) == value else float(value)  # numeric sums (Decimal)


def expected_nets(kind: TransactionType, status: Status, amount_minor: int) -> dict[Bucket, int]:
    """What a transaction's legs net to per bucket once it reached `status`, by the ledger
    rules: the postings of the moves received -> (processing ->) status."""
    nets = dict.fromkeys(Bucket, 0)
    path = [Status.RECEIVED]
    if status != Status.RECEIVED:
        if not can_move(Status.RECEIVED, status):
            path.append(Status.PROCESSING)  # succeeded/failed follow an attempt
        path.append(status)
    for old, new in itertools.pairwise(path):
        event = posting(kind, old, new)
        if event is not None:
            for leg in legs(event, amount_minor):
                nets[leg.bucket] += leg.amount_minor
    return nets


# --- rows to violations: the columns of each paystream_audit_<check>() ----------------------
# Every row starts tenant_id, transaction_id, account_id, currency.


def _ledger_sums(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    total = int(row[4])
    return (
        f"transaction {row[1]}: its {row[3]} ledger entries sum to {total:+d}, not 0",
        {"total_minor": total},
    )


def _balance_facts(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "available_minor": row[4],
        "held_minor": row[5],
        "entries_available_minor": int(row[6]),
        "entries_held_minor": int(row[7]),
    }


def _balance_row(row: Sequence[Any]) -> str:
    if row[4] is None:
        return "has no balance row"
    return f"balance available {row[4]} held {row[5]}"


def _balances_match(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    return (
        f"account {row[2]!r} {row[3]}: {_balance_row(row)}, but its ledger entries sum to"
        f" available {int(row[6])} held {int(row[7])}",
        _balance_facts(row),
    )


def _nonnegative(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    below = [
        f"{what} {value}"
        for what, value in (
            ("balance available", row[4]),
            ("balance held", row[5]),
            ("entries' available", row[6]),
            ("entries' held", row[7]),
        )
        if value is not None and value < 0
    ]
    return f"account {row[2]!r} {row[3]}: below zero: {', '.join(below)}", _balance_facts(row)


def _postings(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    kind, status, amount = TransactionType(row[4]), Status(row[5]), int(row[6])
    found = {Bucket.AVAILABLE: int(row[7]), Bucket.HELD: int(row[8]), Bucket.EXTERNAL: int(row[9])}
    expected = expected_nets(kind, status, amount)
    message = (
        f"{kind} {row[1]} is {status} ({amount} {row[3]}) but its entries net"
        f" {_nets(found)}; expected {_nets(expected)}"
    )
    if row[10]:
        message += f"; {row[10]} entries on another account or currency"
    facts = {
        "type": kind.value,
        "status": status.value,
        "amount_minor": amount,
        **{f"{b.value}_minor": v for b, v in found.items()},
        **{f"expected_{b.value}_minor": v for b, v in expected.items()},
        "entries_elsewhere": int(row[10]),
    }
    return message, facts


def _nets(nets: Mapping[Bucket, int]) -> str:
    return " ".join(f"{bucket.value} {amount:+d}" for bucket, amount in nets.items())


def _terminal_events(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    count = int(row[6])
    facts = {"status": row[5], "terminal_events": count}
    if row[5] is None:
        return (
            f"{count} terminal outcome event(s) name transaction {row[1]}, which does not exist",
            facts,
        )
    if Status(row[5]).terminal:
        message = f"{row[4]} {row[1]} is {row[5]} but has {count} terminal outcome events, not 1"
    else:
        message = f"{row[4]} {row[1]} is {row[5]}, not terminal, yet has {count} terminal events"
    return message, facts


def _last_event(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    facts = {"status": row[5], "version": row[6], "event_version": row[7], "event_status": row[8]}
    head = f"{row[4]} {row[1]} is {row[5]} at version {row[6]}"
    if row[7] is None:
        return f"{head} but has no outcome event", facts
    if row[7] != row[6]:
        return f"{head} but its last outcome event is version {row[7]}", facts
    return f"{head} but its outcome event for that version says {row[8]}", facts


def _stuck(row: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    status, age = Status(row[5]), float(row[8])
    since = "unchanged" if status in (Status.RECEIVED, Status.PROCESSING) else "since creation"
    return (
        f"{row[4]} {row[1]} has been {status} for {age / 3600:.1f}h ({since}): past the"
        f" reconciler's horizon; check it at the provider",
        {"status": status.value, "created_at": row[6], "updated_at": row[7], "age_s": age},
    )


_DESCRIBE: dict[str, Callable[[Sequence[Any]], tuple[str, dict[str, Any]]]] = {
    "ledger_sums": _ledger_sums,
    "balances_match_entries": _balances_match,
    "balances_nonnegative": _nonnegative,
    "postings_match_status": _postings,
    "terminal_events": _terminal_events,
    "last_event_matches": _last_event,
    "stuck_transactions": _stuck,
}


def violation(check: str, row: Sequence[Any]) -> Violation:
    """A row of `paystream_audit_<check>()` as a violation naming what is wrong."""
    message, facts = _DESCRIBE[check](row)
    tenant = f" (tenant {row[0]})" if row[0] is not None else ""
    return Violation(
        check=check,
        message=message + tenant,
        tenant_id=row[0],
        transaction_id=row[1],
        account_id=row[2],
        currency=row[3],
        facts=facts,
    )
