"""The gateway worker in the whole stack: ingest -> Kafka -> worker -> sandbox -> outcomes.

On the shared stack (tests/e2e/conftest.py), which hands every module the demo routes,
the sandbox without faults and every breaker closed with no failure counted, and settles
the jsonpay breaker this module trips or leaves failures on. Provider calls are counted
while nothing but this module sends payments; dead letters are found by their key."""

from __future__ import annotations

import uuid

import httpx
import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack  # with PAYSTREAM_WORKER_WEB_PORT set: /healthz and /metrics


def test_every_demo_country_succeeds_through_its_priority_one_gateway(stack: Stack) -> None:
    txns = {country: stack.deposit(country) for country in DEPOSIT_ROUTES}
    for country, txn in txns.items():
        snap = stack.wait_status(txn, {"succeeded", "failed", "rejected", "unknown"})
        assert snap["status"] == "succeeded", snap
        assert snap["gateway"] == DEPOSIT_ROUTES[country][0], (country, snap["attempts"])
        assert [a["seq"] for a in snap["attempts"]] == [1]
        # Why routing chose it, as the API shows it (one gateway per priority, no demotion).
        assert snap["attempts"][0]["route_reason"] == "priority 1", snap["attempts"]


def test_down_gateway_falls_back_and_the_breaker_cycles(stack: Stack) -> None:
    # GB deposits: jsonpay first, stripe second.
    stack.faults("json", down=True)
    try:
        first = [stack.deposit("GB") for _ in range(3)]
        for txn in first:
            snap = stack.wait_status(txn, {"succeeded", "failed"})
            assert snap["gateway"] == "stripe", snap
            assert snap["attempts"][0]["gateway"] == "jsonpay"
            assert snap["attempts"][0]["status"] == "not_executed"
        # fail_max=3 reached: the next one skips jsonpay without calling it.
        calls_before = len(stack.ledger(provider="json"))
        txn = stack.deposit("GB")
        snap = stack.wait_status(txn, {"succeeded", "failed"})
        assert snap["attempts"][0]["error"]["code"] == "breaker_open", snap["attempts"]
        assert len(stack.ledger(provider="json")) == calls_before
    finally:
        stack.faults("json")  # back up

    # After the reset timeout (3 s) a trial call goes through and closes the breaker.
    def routed_to_jsonpay() -> bool:
        snap = stack.wait_status(stack.deposit("GB"), {"succeeded", "failed"})
        return bool(snap["gateway"] == "jsonpay")

    from tests.support.polling import wait_for

    wait_for(routed_to_jsonpay, timeout=30, interval=0.5, what="jsonpay back in use")


def test_soft_decline_falls_back_hard_decline_does_not(stack: Stack) -> None:
    stack.faults("json", decline_code="temporarily_unavailable")  # jsonpay only
    try:
        soft = stack.deposit("GB")
        snap = stack.wait_status(soft, {"succeeded", "failed"})
    finally:
        stack.faults("json")
    assert snap["status"] == "succeeded"
    assert [a["gateway"] for a in snap["attempts"]] == ["jsonpay", "stripe"]
    assert snap["attempts"][0]["status"] == "declined"
    hard = stack.deposit("GB", metadata={"sandbox_scenario": "decline_insufficient_funds"})
    snap = stack.wait_status(hard, {"succeeded", "failed"})
    assert snap["status"] == "failed"
    assert snap["failure"]["code"] == "insufficient_funds"
    assert [a["gateway"] for a in snap["attempts"]] == ["jsonpay"]


def test_timeout_after_execute_never_falls_back(stack: Stack) -> None:
    txn = stack.deposit("GB", metadata={"sandbox_scenario": "timeout"})
    snap = stack.wait_status(txn, {"succeeded", "failed", "unknown"}, timeout=90)
    # Resolved by the status lookup (the sandbox did execute it) or left unknown: never
    # a second gateway.
    assert snap["status"] in {"succeeded", "unknown"}, snap
    assert {a["gateway"] for a in snap["attempts"]} == {"jsonpay"}
    executed = [e for e in stack.ledger(provider="json") if str(txn) in e["idempotency_key"]]
    assert len(executed) == 1


def test_poison_records_are_dead_lettered_and_the_partition_moves(stack: Stack) -> None:
    from confluent_kafka import Producer

    from tests.support.kafka import consume_until

    bootstrap = stack.env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    prefix = stack.env["PAYSTREAM_TOPIC_PREFIX"]
    account = f"poison-{uuid.uuid4().hex[:6]}"  # one key: one partition, in this order
    producer = Producer({"bootstrap.servers": bootstrap})
    ce = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"x"),
        ("ce_source", b"/t"),
        ("ce_type", b"paystream.deposit.requested.v1"),
        ("ce_time", b"2026-01-01T00:00:00Z"),
        ("ce_tenantid", str(uuid.uuid4()).encode()),
        ("ce_partitionkey", account.encode()),
        ("content-type", b"application/json"),
    ]
    poisons = [
        (b"not json at all", ce),
        (b'{"transaction_id": 1}', ce),  # schema violation
        (b"{}", [(k, v) for k, v in ce if k != "ce_type"]),  # missing attribute
    ]
    for value, headers in poisons:
        producer.produce(
            f"{prefix}.commands",
            key=account.encode(),
            value=value,
            headers=list[tuple[str, str | bytes | None]](headers),
        )
    producer.flush(10)
    good = stack.deposit("DE", account=account)
    assert stack.wait_status(good, {"succeeded"})["status"] == "succeeded"
    dead = consume_until(
        bootstrap,
        f"{prefix}.dead-letters",
        lambda rs: sum(r.key == account.encode() for r in rs) >= 3,
    )
    reasons = [r.headers["dlq_reason"].decode() for r in dead if r.key == account.encode()]
    assert len(reasons) == 3
    assert all(r.startswith("invalid_event") for r in reasons), reasons
    offsets = [r.headers["dlq_offset"] for r in dead if r.key == account.encode()]
    assert len(set(offsets)) == 3


def test_worker_health_and_metrics(stack: Stack) -> None:
    from tests.support.polling import wait_for

    stack.wait_status(stack.deposit("FR"), {"succeeded"})
    url = f"http://127.0.0.1:{stack.env_port('PAYSTREAM_WORKER_WEB_PORT')}"
    health = wait_for(lambda: _get(f"{url}/healthz"), timeout=20, what="worker /healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["assigned_partitions"] == 6
    assert isinstance(body["breakers"], dict)
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert "paystream_worker_commands_total" in metrics


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
