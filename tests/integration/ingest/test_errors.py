"""Every client mistake gets its 4xx problem+json, and nothing reaches Kafka."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.ingest.conftest import IngestEnv
from tests.support.kafka import end_offsets

pytestmark = pytest.mark.integration

DEPOSIT = {"account_id": "user-42", "country": "DE", "amount": "100.00", "currency": "EUR"}


def _problem(response: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["type"] == f"https://paystream.dev/problems/{kind}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def _raw(env: IngestEnv, content: bytes, **headers: str) -> httpx.Response:
    sent = {**env.a.auth, "Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"}
    sent.update(headers)
    return env.client.post("/v1/deposits", content=content, headers=sent)


def test_client_errors_are_problems_and_publish_nothing(ingest_env: IngestEnv) -> None:
    env = ingest_env
    _problem(_raw(env, b'{"account_id": "x",'), 400, "malformed-json")
    _problem(_raw(env, b"\xff\xfe"), 400, "malformed-json")
    no_key = env.client.post("/v1/deposits", json=DEPOSIT, headers=env.a.auth)
    _problem(no_key, 400, "missing-idempotency-key")
    _problem(env.post("/v1/deposits", DEPOSIT, key="x" * 256), 400, "missing-idempotency-key")

    anonymous = env.client.post("/v1/deposits", json=DEPOSIT, headers={"Idempotency-Key": "a"})
    _problem(anonymous, 401, "unauthorized")
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = env.client.post(
        "/v1/deposits",
        json=DEPOSIT,
        headers={"Authorization": "Bearer psk_forged", "Idempotency-Key": "a"},
    )
    _problem(forged, 401, "unauthorized")

    _problem(_raw(env, b"{}", **{"Content-Type": "text/plain"}), 415, "unsupported-media-type")
    _problem(_raw(env, b"x" * 5000), 413, "payload-too-large")

    def chunks() -> object:
        for _ in range(10):
            yield b" " * 1000

    chunked = env.client.post(
        "/v1/deposits",
        content=chunks(),  # type: ignore[arg-type]
        headers={**env.a.auth, "Idempotency-Key": "c", "Content-Type": "application/json"},
    )
    _problem(chunked, 413, "payload-too-large")

    settings = env.settings
    assert end_offsets(settings.kafka_bootstrap, settings.topic("commands"), 6) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "XXX"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"amount": "100.001"}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-5.00"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": 100}, "amount"),
        ({"amount": "99999999999999999999"}, "amount"),
        ({"country": "ZZ"}, "country"),
        ({"country": "de"}, "country"),
        ({"account_id": ""}, "account_id"),
        ({"account_id": "has space"}, "account_id"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"unexpected": True}, "unexpected"),
    ],
)
def test_validation_errors_name_the_field(
    ingest_env: IngestEnv, change: dict[str, object], field: str
) -> None:
    body = _problem(ingest_env.post("/v1/deposits", {**DEPOSIT, **change}), 422, "validation-error")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert field in {e["field"] for e in errors}, errors


def test_missing_fields_and_wrong_shapes(ingest_env: IngestEnv) -> None:
    body = _problem(ingest_env.post("/v1/deposits", {}), 422, "validation-error")
    assert isinstance(body["errors"], list)
    assert {"account_id", "country", "amount", "currency"} <= {e["field"] for e in body["errors"]}
    _problem(ingest_env.post("/v1/deposits", [DEPOSIT]), 422, "validation-error")
    no_destination = ingest_env.post("/v1/withdrawals", DEPOSIT)
    body = _problem(no_destination, 422, "validation-error")
    assert isinstance(body["errors"], list)
    assert "destination" in {e["field"] for e in body["errors"]}
    bad_iban = {**DEPOSIT, "destination": {"holder_name": "A", "iban": "DE00370400440532013000"}}
    body = _problem(ingest_env.post("/v1/withdrawals", bad_iban), 422, "validation-error")
    assert isinstance(body["errors"], list)
    assert "destination.iban" in {e["field"] for e in body["errors"]}


def test_unknown_routes_and_methods_are_problems(ingest_env: IngestEnv) -> None:
    _problem(ingest_env.client.get("/v1/nothing-here"), 404, "not-found")
    _problem(ingest_env.client.put("/v1/deposits", json={}), 405, "method-not-allowed")
    bad_id = ingest_env.client.get("/v1/transactions/not-a-uuid", headers=ingest_env.a.auth)
    _problem(bad_id, 404, "not-found")
