"""POST /v1/deposits and /v1/withdrawals land on Kafka as valid CloudEvents, idempotently."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import psycopg
import pytest

from paystream_core.ids import transaction_id
from paystream_messaging.cloudevents_codec import decode
from paystream_messaging.schemas import SchemaRegistry
from tests.integration.ingest.conftest import IngestEnv
from tests.support.databases import libpq
from tests.support.kafka import Received, consume_until, end_offsets

pytestmark = pytest.mark.integration

DEPOSIT = {"account_id": "user-42", "country": "DE", "amount": "100.00", "currency": "EUR"}
WITHDRAWAL = {
    **DEPOSIT,
    "amount": "25.50",
    "destination": {"holder_name": "Erika Mustermann", "iban": "DE89370400440532013000"},
}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _commands(env: IngestEnv, count: int) -> list[Received]:
    return consume_until(
        env.settings.kafka_bootstrap,
        env.settings.topic("commands"),
        lambda records: len(records) >= count,
        timeout=30,
    )


def test_deposit_lands_as_a_valid_cloudevent(ingest_env: IngestEnv) -> None:
    key = "order-1001"
    response = ingest_env.post(
        "/v1/deposits",
        {**DEPOSIT, "payment_method": "card", "metadata": {"order": "1001"}},
        key=key,
        traceparent=TRACEPARENT,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["transaction_id"] == str(transaction_id(ingest_env.a.id, key))

    [record] = _commands(ingest_env, 1)
    assert record.key == b"user-42"
    event = decode(record.key, record.value, list(record.headers.items()), SchemaRegistry())
    assert event.type == "paystream.deposit.requested.v1"
    assert event.tenant_id == str(ingest_env.a.id)
    assert event.traceparent == TRACEPARENT
    assert event.data["transaction_id"] == body["transaction_id"]
    assert event.data["amount_minor"] == 10000
    assert event.data["currency"] == "EUR"
    assert event.data["idempotency_key"] == key
    assert event.data["metadata"] == {"order": "1001"}
    assert record.headers["content-type"] == b"application/json"


def test_withdrawal_carries_only_sealed_and_masked_destination(ingest_env: IngestEnv) -> None:
    response = ingest_env.post("/v1/withdrawals", WITHDRAWAL)
    assert response.status_code == 202, response.text
    [record] = _commands(ingest_env, 1)
    everything = (record.value or b"") + b"".join(record.headers.values())
    assert b"DE89370400440532013000" not in everything
    assert b"Mustermann" not in everything
    event = decode(record.key, record.value, list(record.headers.items()), SchemaRegistry())
    assert event.type == "paystream.withdrawal.requested.v1"
    assert event.data["amount_minor"] == 2550
    assert event.data["destination"]["masked"] == "DE89 **** 3000"
    assert event.data["destination"]["key_id"]


def test_same_key_same_body_same_transaction(ingest_env: IngestEnv) -> None:
    first = ingest_env.post("/v1/deposits", DEPOSIT, key="repeat-me")
    second = ingest_env.post("/v1/deposits", DEPOSIT, key="repeat-me")
    assert first.status_code == second.status_code == 202
    assert first.json()["transaction_id"] == second.json()["transaction_id"]
    records = _commands(ingest_env, 2)
    ids = {r.headers["ce_id"] for r in records}
    assert len(ids) == 1, "a repeat must republish the same CloudEvent id"
    # A different tenant with the same key is a different transaction.
    other = ingest_env.post("/v1/deposits", DEPOSIT, key="repeat-me", tenant=ingest_env.b)
    assert other.json()["transaction_id"] != first.json()["transaction_id"]


def _store(env: IngestEnv, record: Received, status: str = "pending") -> uuid.UUID:
    """Do what the worker does with a command: store the transaction."""
    data = json.loads(record.value or b"{}")
    with psycopg.connect(libpq(env.database_url)) as conn:
        conn.execute(
            "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (data["tenant_id"], data["account_id"], data["country"]),
        )
        conn.execute(
            "INSERT INTO transactions (id, tenant_id, account_id, type, status, version,"
            " amount_minor, currency, country, idempotency_key, payload_hash)"
            " VALUES (%(transaction_id)s, %(tenant_id)s, %(account_id)s, 'deposit', %(status)s,"
            " 3, %(amount_minor)s, %(currency)s, %(country)s, %(idempotency_key)s,"
            " %(payload_hash)s)",
            {**data, "status": status},
        )
    return uuid.UUID(data["transaction_id"])


def test_stored_transaction_repeat_and_conflict(ingest_env: IngestEnv) -> None:
    assert ingest_env.post("/v1/deposits", DEPOSIT, key="k-stored").status_code == 202
    [record] = _commands(ingest_env, 1)
    txn = _store(ingest_env, record)

    repeat = ingest_env.post("/v1/deposits", DEPOSIT, key="k-stored")
    assert repeat.status_code == 202
    assert repeat.json()["idempotent_replay"] is True
    assert repeat.json()["transaction_status"] == "pending"
    assert repeat.json()["transaction_id"] == str(txn)

    conflict = ingest_env.post("/v1/deposits", {**DEPOSIT, "amount": "100.01"}, key="k-stored")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    assert conflict.json()["type"].endswith("/idempotency-conflict")
    # Nothing was published for the repeat or the conflict (a publish precedes the answer).
    settings = ingest_env.settings
    assert end_offsets(settings.kafka_bootstrap, settings.topic("commands"), 6) == 1


def test_transaction_snapshot_and_tenant_isolation(ingest_env: IngestEnv) -> None:
    assert ingest_env.post("/v1/deposits", DEPOSIT, key="snap").status_code == 202
    [record] = _commands(ingest_env, 1)
    txn = _store(ingest_env, record, status="processing")

    mine = ingest_env.client.get(f"/v1/transactions/{txn}", headers=ingest_env.a.auth)
    assert mine.status_code == 200
    snap = mine.json()
    assert snap["status"] == "processing"
    assert snap["amount"] == "100.00"
    assert snap["currency"] == "EUR"
    assert snap["version"] == 3
    assert snap["attempts"] == []

    theirs = ingest_env.client.get(f"/v1/transactions/{txn}", headers=ingest_env.b.auth)
    assert theirs.status_code == 404
    assert theirs.json()["type"].endswith("/not-found")

    with psycopg.connect(libpq(ingest_env.database_url)) as conn:
        conn.execute(
            "INSERT INTO balances (tenant_id, account_id, currency, available_minor, held_minor)"
            " VALUES (%s, 'user-42', 'EUR', 12345, 500)",
            (ingest_env.a.id,),
        )
    balances = ingest_env.client.get("/v1/accounts/user-42/balances", headers=ingest_env.a.auth)
    assert balances.status_code == 200
    assert balances.json()["balances"] == [
        {
            "currency": "EUR",
            "available": "123.45",
            "held": "5.00",
            "available_minor": 12345,
            "held_minor": 500,
        }
    ]
    hidden = ingest_env.client.get("/v1/accounts/user-42/balances", headers=ingest_env.b.auth)
    assert hidden.status_code == 404


def test_one_key_different_bodies_concurrently_only_the_first_is_accepted(
    ingest_env: IngestEnv,
) -> None:
    """30 concurrent POSTs, one Idempotency-Key, 30 amounts: exactly one is accepted and
    published, every other body gets 409, whatever the timing (the key is reserved in the
    database before the command is published)."""

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ingest_env.url, timeout=30) as client:
            headers = {**ingest_env.a.auth, "Idempotency-Key": "raced-key"}
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/deposits", json={**DEPOSIT, "amount": f"{n}.00"}, headers=headers
                    )
                    for n in range(1, 31)
                )
            )

    responses = asyncio.run(race())
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 29, codes
    [accepted] = [r for r in responses if r.status_code == 202]
    conflicts = [r for r in responses if r.status_code == 409]
    assert {c.json()["transaction_id"] for c in conflicts} == {accepted.json()["transaction_id"]}
    [record] = _commands(ingest_env, 1)
    published = json.loads(record.value or b"{}")["amount_minor"]
    with psycopg.connect(libpq(ingest_env.database_url)) as conn:
        [(bound,)] = conn.execute(
            "SELECT payload_hash FROM idempotency_keys WHERE key = 'raced-key'"
        ).fetchall()
    assert bound == json.loads(record.value or b"{}")["payload_hash"]
    assert published in {n * 100 for n in range(1, 31)}
