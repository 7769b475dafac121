"""The callback worker (a real faust process) fed by the ingress over HTTP and Kafka:
duplicates change nothing, any order of a payment's callbacks ends in the same terminal
state, and a callback that comes before its attempt is parked, then applied."""

from __future__ import annotations

import asyncio
import functools
import secrets
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paystream_core.ids import attempt_idempotency_key
from tests.integration.callbacks.conftest import Callback, Conn, Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration


async def test_fifty_duplicate_deliveries_make_one_transition(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    tenant = stack.new_tenant()
    conn = stack.connect(tenant, "json")
    txn = stack.seed_pending(conn, amount_minor=2500)
    cb = stack.callback(
        conn,
        payment_id=txn.provider_reference,
        reference=txn.reference,
        status="succeeded",
        amount_minor=2500,
    )
    handled = stack.worker_handled()
    for _ in range(20):  # a provider retrying one by one...
        response = await client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
        assert response.status_code == 200, response.text
    # ...and 30 at once (a provider's parallel redelivery).
    responses = await asyncio.gather(
        *(
            client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
            for _ in range(30)
        )
    )
    assert [r.status_code for r in responses] == [200] * 30
    wait_for(lambda: stack.worker_handled() >= handled + 50, timeout=60, what="50 handled")

    assert stack.status(txn.id) == "succeeded"
    assert stack.outcomes(txn.id) == ["succeeded"], "exactly one transition and one event"
    assert stack.available(tenant, txn.account) == 2500, "credited once"
    assert stack.ledger_sum(txn.id) == 0
    assert stack.query(
        "SELECT count(*) FROM inbox WHERE message_id = %s", f"{conn.id}:{cb.event_id}"
    ) == [(1,)]
    assert stack.query("SELECT version FROM transactions WHERE id = %s", txn.id) == [(4,)], (
        "seeded at version 3, one move"
    )


_CONN: dict[str, Conn] = {}


def _send_and_wait(stack: Stack, http: httpx.Client, conn: Conn, cb: Callback) -> None:
    before = stack.worker_handled()
    response = http.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
    assert response.status_code == 200, response.text
    wait_for(lambda: stack.worker_handled() > before, timeout=30, what="callback handled")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), final=st.sampled_from(["succeeded", "declined"]))
def test_every_order_of_callbacks_ends_in_the_same_terminal_state(
    stack: Stack, data: st.DataObject, final: str
) -> None:
    if "conn" not in _CONN:
        _CONN["conn"] = stack.connect(stack.new_tenant(), "json")
    conn = _CONN["conn"]
    txn = stack.seed_pending(conn)

    def cb(status: str) -> Callback:
        return stack.callback(
            conn,
            payment_id=txn.provider_reference,
            reference=txn.reference,
            status=status,  # type: ignore[arg-type]
            failure_code="insufficient_funds" if status == "declined" else None,
        )

    terminal = cb(final)
    story = [cb("action_required"), cb("pending"), terminal, terminal, cb("pending")]
    order = data.draw(st.permutations(range(len(story))), label="delivery order")
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as http:
        for index in order:
            _send_and_wait(stack, http, conn, story[index])

    expected = "succeeded" if final == "succeeded" else "failed"
    assert stack.status(txn.id) == expected, order
    events = stack.outcomes(txn.id)
    assert events[-1] == expected, (order, events)
    assert events.count(expected) == 1, (order, events)
    credited = txn.amount_minor if expected == "succeeded" else 0
    assert stack.available(conn.tenant, txn.account) == credited
    assert stack.ledger_sum(txn.id) == 0
    if expected == "failed":
        assert stack.query("SELECT failure_code FROM transactions WHERE id = %s", txn.id) == [
            ("insufficient_funds",)
        ]


async def test_contradicting_late_callback_is_an_anomaly(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    tenant = stack.new_tenant()
    conn = stack.connect(tenant, "json")
    txn = stack.seed_pending(conn)
    ok = stack.callback(
        conn, payment_id=txn.provider_reference, reference=txn.reference, status="succeeded"
    )
    late = stack.callback(
        conn,
        payment_id=txn.provider_reference,
        reference=txn.reference,
        status="declined",
        failure_code="do_not_honor",
    )
    for item in (ok, late):
        response = await client.post(
            conn.path, content=item.body, headers=item.headers(conn.secret)
        )
        assert response.status_code == 200
        processed = functools.partial(stack.processed, conn, item.event_id)
        wait_for(processed, timeout=30, what=item.event_id)
    assert stack.status(txn.id) == "succeeded", "terminal statuses absorb"
    assert stack.outcomes(txn.id) == ["succeeded"]
    assert stack.query(
        "SELECT kind, transaction_status, reported_status, provider_event_id FROM anomalies"
        " WHERE transaction_id = %s",
        txn.id,
    ) == [("contradiction", "succeeded", "failed", late.event_id)]
    metrics = httpx.get(f"{stack.worker_health}/metrics").text
    assert 'paystream_anomalies_total{kind="contradiction",source="callback"}' in metrics


async def test_orphan_callback_is_parked_then_applied_once_the_attempt_exists(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    tenant = stack.new_tenant()
    conn = stack.connect(tenant, "json")
    txn_id, provider_ref = uuid.uuid4(), f"ref_{secrets.token_hex(8)}"
    reference = attempt_idempotency_key(txn_id, 1)
    cb = stack.callback(conn, payment_id=provider_ref, reference=reference, status="succeeded")
    response = await client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
    assert response.status_code == 200

    def parked() -> list[tuple[object, ...]]:
        return stack.query(
            "SELECT tries, resolved_at, resolution FROM parked_callbacks"
            " WHERE connection_id = %s AND provider_event_id = %s",
            conn.id,
            cb.event_id,
        )

    wait_for(parked, timeout=30, what="the orphan parked")
    wait_for(lambda: int(parked()[0][0]) >= 2, timeout=30, what="parked retries")  # type: ignore[call-overload]
    assert parked()[0][1] is None
    assert stack.query("SELECT 1 FROM transactions WHERE id = %s", txn_id) == []

    # The gateway worker records the attempt (the provider's answer came after its callback).
    txn = stack.seed_pending(conn, txn=txn_id, provider_reference=provider_ref)
    wait_for(lambda: stack.status(txn_id) == "succeeded", timeout=30, what="orphan applied")
    [(_, resolved_at, resolution)] = parked()
    assert resolved_at is not None
    assert resolution == "moved"
    assert stack.outcomes(txn_id) == ["succeeded"]
    assert stack.available(tenant, txn.account) == txn.amount_minor
    # A redelivery of the same callback is a duplicate now, not a second park.
    handled = stack.worker_handled()
    response = await client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
    assert response.status_code == 200
    wait_for(lambda: stack.worker_handled() > handled, timeout=30)
    assert stack.outcomes(txn_id) == ["succeeded"]
