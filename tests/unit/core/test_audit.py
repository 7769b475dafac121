"""The money audit's pure side: what a transaction's legs must net to, and violations that
name what is wrong."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from paystream_core.audit import CHECK_NAMES, CHECKS, expected_nets, violation
from paystream_core.ledger import Bucket, legs, posting
from paystream_core.statuses import Status, TransactionType, can_move

A, H, X = Bucket.AVAILABLE, Bucket.HELD, Bucket.EXTERNAL
D, W = TransactionType.DEPOSIT, TransactionType.WITHDRAWAL
TENANT, TXN = uuid.uuid4(), uuid.uuid4()


def _paths(path: list[Status]) -> Iterator[list[Status]]:
    """Every path the state machine allows from `path`'s last status."""
    yield path
    for new in Status:
        if can_move(path[-1], new):
            yield from _paths([*path, new])


@pytest.mark.parametrize(
    ("kind", "status", "nets"),
    [
        (D, Status.RECEIVED, (0, 0, 0)),
        (D, Status.PROCESSING, (0, 0, 0)),
        (D, Status.PENDING, (0, 0, 0)),
        (D, Status.SUCCEEDED, (100, 0, -100)),
        (D, Status.FAILED, (0, 0, 0)),
        (D, Status.REJECTED, (0, 0, 0)),
        (W, Status.RECEIVED, (0, 0, 0)),
        (W, Status.PROCESSING, (-100, 100, 0)),
        (W, Status.ACTION_REQUIRED, (-100, 100, 0)),
        (W, Status.PENDING, (-100, 100, 0)),
        (W, Status.UNKNOWN, (-100, 100, 0)),
        (W, Status.SUCCEEDED, (-100, 0, 100)),
        (W, Status.FAILED, (0, 0, 0)),
        (W, Status.REJECTED, (0, 0, 0)),
    ],
)
def test_expected_nets(kind: TransactionType, status: Status, nets: tuple[int, ...]) -> None:
    assert expected_nets(kind, status, 100) == dict(zip((A, H, X), nets, strict=True))


@pytest.mark.parametrize("kind", list(TransactionType))
def test_every_path_to_a_status_nets_the_same(kind: TransactionType) -> None:
    """The audit compares nets, not histories: that is sound only if every path the state
    machine allows to a status posts the same nets."""
    seen = 0
    for path in _paths([Status.RECEIVED]):
        nets = dict.fromkeys(Bucket, 0)
        for old, new in itertools.pairwise(path):
            event = posting(kind, old, new)
            for leg in legs(event, 7) if event is not None else ():
                nets[leg.bucket] += leg.amount_minor
        assert nets == expected_nets(kind, path[-1], 7), path
        assert sum(nets.values()) == 0
        seen += 1
    assert seen > 20


def test_every_check_describes_its_rows() -> None:
    assert len(set(CHECK_NAMES)) == len(CHECKS) == 7
    rows = {
        "ledger_sums": (TENANT, TXN, None, "EUR", Decimal(5)),
        "balances_match_entries": (TENANT, None, "acct-1", "EUR", 10, 0, Decimal(9), Decimal(0)),
        "balances_nonnegative": (TENANT, None, "acct-1", "EUR", -3, 0, Decimal(-3), Decimal(0)),
        "postings_match_status": (
            TENANT,
            TXN,
            "acct-1",
            "EUR",
            "deposit",
            "succeeded",
            500,
            Decimal(0),
            Decimal(0),
            Decimal(0),
            0,
        ),
        "terminal_events": (TENANT, TXN, "acct-1", "EUR", "deposit", "succeeded", 0),
        "last_event_matches": (TENANT, TXN, "acct-1", "EUR", "deposit", "pending", 3, 3, "failed"),
        "stuck_transactions": (
            TENANT,
            TXN,
            "acct-1",
            "EUR",
            "deposit",
            "pending",
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 1, 1, tzinfo=UTC),
            90_000.0,
        ),
    }
    assert set(rows) == set(CHECK_NAMES)
    for check, row in rows.items():
        v = violation(check, row)
        assert v.check == check
        assert str(TENANT) in v.message
        assert (str(TXN) in v.message) or ("'acct-1' EUR" in v.message), v.message
        json.dumps(v.to_json())  # numeric sums and times are plain JSON


def test_messages_say_what_is_wrong() -> None:
    mismatch = violation(
        "balances_match_entries", (TENANT, None, "acct-1", "EUR", 1100, 0, Decimal(1000), 0)
    )
    assert mismatch.message.startswith(
        "account 'acct-1' EUR: balance available 1100 held 0, but its ledger entries sum to"
        " available 1000 held 0"
    )
    missing = violation("terminal_events", (TENANT, TXN, "a", "EUR", "deposit", "succeeded", 0))
    assert f"deposit {TXN} is succeeded but has 0 terminal outcome events, not 1" in missing.message
    uncredited = violation(
        "postings_match_status",
        (TENANT, TXN, "a", "EUR", "deposit", "succeeded", 500, 0, 0, 0, 0),
    )
    assert "expected available +500 held +0 external -500" in uncredited.message
    assert uncredited.to_json()["facts"]["expected_available_minor"] == 500
    no_row = violation("balances_match_entries", (TENANT, None, "a", "EUR", None, None, 5, 0))
    assert "has no balance row" in no_row.message
    stale = violation(
        "last_event_matches", (TENANT, TXN, "a", "EUR", "deposit", "succeeded", 3, 2, "pending")
    )
    assert "its last outcome event is version 2" in stale.message
