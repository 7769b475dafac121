"""The callback ingress over real HTTP: only callbacks signed with the connection's own,
current secret reach Kafka; everything else is a 4xx problem and changes nothing."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import httpx
import pytest

from paystream_gateways import signing
from paystream_messaging.topics import CALLBACKS
from tests.integration.callbacks.conftest import SIGNATURE_HEADERS, Conn, Stack
from tests.support.kafka import end_offsets
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

PROVIDERS = ["stripe", "json", "soap"]


def _published(stack: Stack) -> int:
    return end_offsets(stack.kafka_bootstrap, f"{stack.topic_prefix}.{CALLBACKS}", 3)


def _bad_requests(stack: Stack, conn: Conn, other: Conn, body: bytes) -> dict[str, Any]:
    """name -> (headers, expected problem type) for each way a signature can be wrong."""
    header = SIGNATURE_HEADERS[conn.provider]
    media = {"Content-Type": "application/json" if conn.provider != "soap" else "text/xml"}
    now = int(time.time())
    return {
        "forged": ({**media, header: f"t={now},v1={secrets.token_hex(32)}"}, "invalid-signature"),
        "wrong_secret": ({**media, header: signing.sign("whsec_wrong", body)}, "invalid-signature"),
        "other_connections_secret": (
            {**media, header: signing.sign(other.secret, body)},
            "invalid-signature",
        ),
        "stale": (
            {**media, header: signing.sign(conn.secret, body, timestamp=now - 400)},
            "stale-signature",
        ),
        "future": (
            {**media, header: signing.sign(conn.secret, body, timestamp=now + 400)},
            "stale-signature",
        ),
        "missing_header": (media, "invalid-signature"),
        "malformed_header": ({**media, header: "v1=,t=yesterday"}, "invalid-signature"),
        "signature_of_other_body": (
            {**media, header: signing.sign(conn.secret, body + b" ")},
            "invalid-signature",
        ),
    }


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_bad_signatures_are_refused_and_change_nothing(
    stack: Stack, client: httpx.AsyncClient, provider: str
) -> None:
    tenant = stack.new_tenant()
    conn, other = stack.connect(tenant, provider), stack.connect(stack.new_tenant(), provider)
    txn = stack.seed_pending(conn)
    cb = stack.callback(
        conn, payment_id=txn.provider_reference, reference=txn.reference, status="succeeded"
    )
    before = _published(stack)
    for name, (headers, problem) in _bad_requests(stack, conn, other, cb.body).items():
        response = await client.post(conn.path, content=cb.body, headers=headers)
        assert response.status_code == 400, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith(problem), (name, response.json())
    assert _published(stack) == before, "a refused callback reached Kafka"
    assert stack.status(txn.id) == "pending"
    verdicts = stack.query(
        "SELECT verdict, count(*) FROM callback_log WHERE connection_id = %s GROUP BY verdict",
        conn.id,
    )
    assert dict(verdicts) == {"rejected_signature": 6, "rejected_stale": 2}

    # The same body, correctly signed, goes through and settles the transaction.
    response = await client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "event_id": cb.event_id}
    assert _published(stack) == before + 1
    wait_for(lambda: stack.status(txn.id) == "succeeded", timeout=20, what="succeeded")
    assert stack.available(tenant, txn.account) == txn.amount_minor


async def test_unknown_connection_wrong_gateway_and_bad_bodies(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    conn = stack.connect(stack.new_tenant(), "json")
    txn = stack.seed_pending(conn)
    cb = stack.callback(
        conn, payment_id=txn.provider_reference, reference=txn.reference, status="succeeded"
    )
    signed = cb.headers(conn.secret)
    before = _published(stack)
    cases = {
        f"/v1/callbacks/jsonpay/{uuid.uuid4()}": 404,
        "/v1/callbacks/jsonpay/not-a-uuid": 404,
        f"/v1/callbacks/stripe/{conn.id}": 404,  # the connection belongs to another gateway
    }
    for path, status in cases.items():
        response = await client.post(path, content=cb.body, headers=signed)
        assert response.status_code == status, (path, response.text)
        assert response.json()["type"].endswith("unknown-connection")
    # Signed by the provider, but not a payment event we can read: 400, kept in the log.
    junk = b'{"id": "evt_x", "type": "payment.succeeded"}'
    response = await client.post(conn.path, content=junk, headers=_signed(conn, junk))
    assert response.status_code == 400
    assert response.json()["type"].endswith("malformed-callback")
    # Too large, declared or chunked.
    big = b"x" * 20_000
    response = await client.post(conn.path, content=big, headers=_signed(conn, big))
    assert response.status_code == 413

    async def chunks() -> Any:
        yield b"{" * 10_000
        yield b"}" * 10_000

    response = await client.post(conn.path, content=chunks(), headers=signed)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert _published(stack) == before
    assert stack.status(txn.id) == "pending"
    assert stack.query("SELECT verdict FROM callback_log WHERE connection_id = %s", conn.id) == [
        ("rejected_malformed",)
    ]


async def test_health_ready_metrics(stack: Stack, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "kafka": True, "database": True}
    metrics = (await client.get("/metrics")).text
    assert "paystream_callbacks_received_total" in metrics


def _signed(conn: Conn, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADERS[conn.provider]: signing.sign(conn.secret, body),
    }
