"""Health, readiness, metrics and the OpenAPI document of the ingest API."""

from __future__ import annotations

import pytest

from tests.integration.ingest.conftest import IngestEnv

pytestmark = pytest.mark.integration

DEPOSIT = {"account_id": "user-1", "country": "DE", "amount": "1.00", "currency": "EUR"}


def test_health_and_readiness(ingest_env: IngestEnv) -> None:
    assert ingest_env.client.get("/healthz").json() == {"status": "ok"}
    ready = ingest_env.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "kafka": True, "database": True}


def test_metrics_count_requests_and_publishes(ingest_env: IngestEnv) -> None:
    assert ingest_env.post("/v1/deposits", DEPOSIT).status_code == 202
    assert ingest_env.post("/v1/deposits", {"bad": 1}).status_code == 422
    text = ingest_env.client.get("/metrics").text
    assert 'paystream_ingest_commands_published_total{type="deposit"} 1.0' in text
    assert (
        'paystream_ingest_requests_total{method="POST",route="/v1/deposits",status="422"} 1.0'
        in text
    )


def test_openapi_documents_every_response(ingest_env: IngestEnv) -> None:
    doc = ingest_env.client.get("/openapi.json").json()
    post = doc["paths"]["/v1/deposits"]["post"]
    assert set(post["responses"]) == {"202", "400", "401", "409", "413", "415", "422", "503"}
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/DepositRequest"
    )
    assert {p["name"] for p in post["parameters"]} == {"Idempotency-Key", "traceparent"}
    withdrawal = doc["components"]["schemas"]["WithdrawalRequest"]
    assert "destination" in withdrawal["required"]
    get = doc["paths"]["/v1/transactions/{transaction_id}"]["get"]
    assert set(get["responses"]) == {"200", "401", "404", "503"}
    assert "Retry-After" in get["responses"]["503"]["headers"]
    assert "service-unavailable" in post["responses"]["503"]["description"]
    assert doc["paths"]["/readyz"]["get"]["responses"]["503"]
