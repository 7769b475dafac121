"""The in-memory store keeps the storage port's promises (those of paystream_storage.payments)
that the service tests rely on."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from paystream_core.ids import attempt_idempotency_key
from paystream_core.ports import AttemptKey
from paystream_core.records import AttemptRecord, TransactionRecord
from paystream_core.statuses import AttemptStatus, Status, TransactionType
from paystream_core.transitions import transition
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.payments import ConcurrentChange, PostingRefused
from tests.support.fake_store import FakeStore

AT = datetime(2026, 1, 1, tzinfo=UTC)
REGISTRY = SchemaRegistry()


def received(tenant: uuid.UUID, *, key: str = "k", amount: int = 100) -> TransactionRecord:
    return TransactionRecord(
        id=uuid.uuid4(),
        tenant_id=tenant,
        account_id="acc-1",
        type=TransactionType.WITHDRAWAL,
        status=Status.RECEIVED,
        version=1,
        amount_minor=amount,
        currency="EUR",
        country="DE",
        idempotency_key=key,
        payload_hash="h",
        provider_reference="not inserted",
    )


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(REGISTRY)


async def test_a_unit_that_raises_leaves_nothing(store: FakeStore) -> None:
    tenant = store.add_tenant()

    async def write_then_fail() -> None:
        async with store.unit(tenant) as unit:
            await unit.add_accounts([("acc-1", "DE")])
            await unit.add_transactions([received(tenant)])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await write_then_fail()
    assert store.state.transactions == {}
    assert store.state.accounts == {}
    assert (store.commits, store.rollbacks) == (0, 1)


async def test_inserts_skip_what_exists_and_store_only_their_columns(store: FakeStore) -> None:
    tenant = store.add_tenant()
    first, same_key = received(tenant), received(tenant)
    async with store.unit(tenant) as unit:
        await unit.add_accounts([("acc-1", "DE")])
        assert await unit.add_transactions([first, same_key]) == {first.id}
        assert await unit.add_transactions([first]) == set()
        stored = await unit.transaction(first.id)
        assert stored is not None
        assert stored.provider_reference is None
        key = attempt_idempotency_key(first.id, 1)
        conn = uuid.uuid4()
        attempt = AttemptRecord(
            uuid.uuid4(), tenant, first.id, 1, "gw_a", conn, key, AttemptStatus.STARTED
        )
        same_seq = dataclasses.replace(attempt, id=uuid.uuid4(), idempotency_key="other")
        assert await unit.add_attempts([attempt, same_seq]) == {attempt.id}


async def test_units_see_only_their_tenant(store: FakeStore) -> None:
    a, b = store.add_tenant(), store.add_tenant()
    txn = store.put_transaction(received(a))
    async with store.unit(b) as unit:
        assert await unit.transaction(txn.id) is None
        assert await unit.lock_transactions([txn.id]) == {}
        assert await unit.attempts([txn.id]) == {txn.id: []}
    async with store.unit(None) as unit:
        with pytest.raises(RuntimeError, match="no tenant scope"):
            await unit.transaction(txn.id)
        assert await unit.reconcile_due(pending_age_s=0, action_expiry_s=0, limit=10) == []


async def test_holds_apply_in_order_and_refused_ones_are_returned(store: FakeStore) -> None:
    tenant = store.add_tenant()
    store.set_balance(tenant, "acc-1", available=150)
    one = store.put_transaction(received(tenant, key="1"))
    two = store.put_transaction(received(tenant, key="2"))
    moves = [transition(t, Status.PROCESSING, at=AT) for t in (one, two)]
    async with store.unit(tenant) as unit:
        assert await unit.apply([m for m in moves if m], source="/t") == {two.id}
    assert store.balance(tenant, "acc-1") == (50, 100)
    assert (store.status(one.id), store.status(two.id)) == (Status.PROCESSING, Status.RECEIVED)
    assert store.outcomes(one.id) == [("processing", 2)]
    assert store.outcomes(two.id) == []


async def test_several_moves_of_one_transaction_in_one_call(store: FakeStore) -> None:
    tenant = store.add_tenant()
    store.set_balance(tenant, "acc-1", available=100)
    txn = store.put_transaction(received(tenant))
    first = transition(txn, Status.PROCESSING, at=AT)
    assert first is not None
    second = transition(first.after, Status.PENDING, at=AT)
    assert second is not None
    third = transition(second.after, Status.SUCCEEDED, at=AT)
    assert third is not None
    async with store.unit(tenant) as unit:
        assert await unit.apply([first, second, third], source="/t") == set()
    assert store.outcomes(txn.id) == [("processing", 2), ("pending", 3), ("succeeded", 4)]
    assert store.balance(tenant, "acc-1") == (0, 0)
    assert store.ledger_sum(txn.id) == 0


async def test_books_that_disagree_roll_the_unit_back(store: FakeStore) -> None:
    tenant = store.add_tenant()
    pending = store.put_transaction(dataclasses.replace(received(tenant), status=Status.PENDING))
    settle = transition(pending, Status.SUCCEEDED, at=AT)  # nothing was ever held
    assert settle is not None
    with pytest.raises(PostingRefused):
        async with store.unit(tenant) as unit:
            await unit.apply([settle], source="/t")
    stale = transition(dataclasses.replace(pending, version=7), Status.FAILED, at=AT)
    assert stale is not None
    with pytest.raises(ConcurrentChange):
        async with store.unit(tenant) as unit:
            await unit.apply([dataclasses.replace(stale, money=None)], source="/t")
    assert store.status(pending.id) == Status.PENDING
    assert store.state.ledger == []


async def test_find_attempts_by_our_key_then_the_newest_reference(store: FakeStore) -> None:
    tenant = store.add_tenant()
    txn = store.put_transaction(received(tenant))
    conn, other = uuid.uuid4(), uuid.uuid4()

    def pending(seq: int) -> AttemptRecord:
        key = f"key-{seq}"
        status = AttemptStatus.PENDING
        record = AttemptRecord(uuid.uuid4(), tenant, txn.id, seq, "gw_a", conn, key, status)
        return store.put_attempt(dataclasses.replace(record, provider_reference="pi_same"))

    older, newer = pending(1), pending(2)
    by_key = AttemptKey(conn, "key-1", "pi_same")
    by_ref = AttemptKey(conn, "unknown-key", "pi_same")
    elsewhere = AttemptKey(other, "key-1", "pi_same")
    async with store.unit(tenant) as unit:
        found = await unit.find_attempts([by_key, by_ref, elsewhere])
    assert found == {by_key: older, by_ref: newer}


async def test_first_seen_once_across_units(store: FakeStore) -> None:
    tenant = store.add_tenant()
    async with store.unit(tenant) as unit:
        assert await unit.first_seen("c", ["a", "b", "a"]) == {"a", "b"}
    async with store.unit(tenant) as unit:
        assert await unit.first_seen("c", ["a", "c"]) == {"c"}
        assert await unit.first_seen("other-consumer", ["a"]) == {"a"}
