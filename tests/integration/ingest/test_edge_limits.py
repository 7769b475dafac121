"""What storage and the ledger cannot hold is refused at the edge (422/400/404 problem+json,
the field named in `detail`), and the OpenAPI document admits only what the server takes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    status_code_conformance,
)

from paystream_core.limits import MAX_AMOUNT_MINOR
from paystream_ingest_api.app import create_app
from paystream_ingest_api.settings import IngestSettings
from paystream_messaging.topics import ensure_topics
from tests.integration.ingest.conftest import IngestEnv, build_deps, make_tenant
from tests.support.asgi_server import serve
from tests.support.databases import libpq
from tests.support.kafka import end_offsets

pytestmark = pytest.mark.integration

DEPOSIT = {"account_id": "user-42", "country": "DE", "amount": "100.00", "currency": "EUR"}
DESTINATION = {"holder_name": "Ada", "iban": "DE89370400440532013000"}


def _problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://paystream.dev/problems/{kind}"
    return body


@pytest.mark.parametrize(
    ("path", "change", "field"),
    [
        ("/v1/deposits", {"metadata": {"note": "a\x00b"}}, "metadata.note"),
        ("/v1/deposits", {"metadata": {"note": "line\nbreak"}}, "metadata.note"),
        ("/v1/deposits", {"metadata": {"note": "c1\x85"}}, "metadata.note"),
        ("/v1/deposits", {"payment_method": "card\x00"}, "payment_method"),
        ("/v1/deposits", {"payment_method": "\x1b[31mred"}, "payment_method"),
        ("/v1/deposits", {"account_id": "user\x00"}, "account_id"),
        ("/v1/deposits", {"metadata": {"k\x00": "v"}}, "metadata.k\x00.[key]"),
        ("/v1/deposits", {"amount": "92233720368547758.07"}, "amount"),
        ("/v1/deposits", {"amount": "10000000000.01"}, "amount"),
        ("/v1/deposits", {"amount": "1000000000001", "currency": "JPY"}, "amount"),
        ("/v1/deposits", {"amount": "1000000000.001", "currency": "KWD"}, "amount"),
        (
            "/v1/withdrawals",
            {"destination": {**DESTINATION, "holder_name": "Ada\x00"}},
            "destination.holder_name",
        ),
    ],
)
def test_unstorable_values_are_422_naming_the_field(
    ingest_env: IngestEnv, path: str, change: dict[str, Any], field: str
) -> None:
    body = {**DEPOSIT, **({"destination": DESTINATION} if "withdrawals" in path else {}), **change}
    problem = _problem(ingest_env.post(path, body), 422, "validation-error")
    assert field in {e["field"] for e in problem["errors"]}, problem
    assert problem["detail"].startswith(f"request is invalid: {field}: "), problem
    settings_ = ingest_env.settings
    assert end_offsets(settings_.kafka_bootstrap, settings_.topic("commands"), 6) == 0


def test_the_ceilings_themselves_are_accepted(ingest_env: IngestEnv) -> None:
    for amount, currency in (
        ("10000000000.00", "EUR"),
        ("1000000000000", "JPY"),
        ("1000000000.000", "KWD"),
        ("0.001", "KWD"),
    ):
        response = ingest_env.post(
            "/v1/deposits", {**DEPOSIT, "amount": amount, "currency": currency}
        )
        assert response.status_code == 202, (amount, currency, response.text)
    assert MAX_AMOUNT_MINOR == 10**12


def test_control_characters_in_headers_and_paths(ingest_env: IngestEnv) -> None:
    env = ingest_env
    # (HTTP clients refuse to send NUL or other controls in a header; a tab they send.)
    for key in ("a\tb", "é", "x" * 256):
        raw = key.encode("latin-1")
        response = env.client.post(
            "/v1/deposits",
            json=DEPOSIT,
            headers=[
                (b"authorization", f"Bearer {env.a.api_key}".encode()),
                (b"idempotency-key", raw),
            ],
        )
        _problem(response, 400, "missing-idempotency-key")
    for path in (
        "/v1/accounts/%00/balances",
        "/v1/accounts/a%0Ab/balances",
        "/v1/accounts/%C2%85/balances",
        "/v1/accounts/" + "x" * 65 + "/balances",
        "/v1/transactions/%00",
    ):
        _problem(env.client.get(path, headers=env.a.auth), 404, "not-found")


def test_openapi_publishes_the_limits(ingest_env: IngestEnv) -> None:
    doc = ingest_env.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    deposit = schemas["DepositRequest"]
    branches = {
        c: b["properties"]["amount"]["pattern"]
        for b in deposit["anyOf"]
        for c in b["properties"]["currency"]["enum"]
    }
    assert set(branches) >= {"EUR", "JPY", "KWD"}
    metadata = deposit["properties"]["metadata"]["anyOf"][0]
    assert metadata["additionalProperties"] is False
    assert all("pattern" in value for value in metadata["patternProperties"].values())
    key = doc["paths"]["/v1/deposits"]["post"]["parameters"][0]
    assert key["name"] == "Idempotency-Key"
    assert key["schema"]["pattern"]
    balances = doc["paths"]["/v1/accounts/{account_id}/balances"]["get"]["parameters"][0]
    assert balances["schema"]["pattern"]


@pytest.fixture
def default_limits_env(kafka_bootstrap: str, primary_database_url: str) -> Iterator[IngestEnv]:
    """The API with its default body limit (the shared fixture's 4 KiB would refuse
    bodies the document admits with 413)."""
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=primary_database_url,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
    )
    ensure_topics(settings)
    with psycopg.connect(libpq(primary_database_url)) as conn:
        for country in ("DE", "FR", "NL", "GB"):
            conn.execute("INSERT INTO countries VALUES (%s, %s)", (country, country))
        a, b = make_tenant(conn, "tenant-a"), make_tenant(conn, "tenant-b")
    deps = build_deps(settings)
    with serve(create_app(deps)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield IngestEnv(url, settings, primary_database_url, a, b, client)
    deps.publisher.close(5)


def _valid_iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


# The one rule no JSON Schema states: IBAN check digits (ISO 7064 mod 97-10). Generated
# IBANs get correct ones, so positive data is valid data.
_IBANS = st.builds(
    _valid_iban,
    st.sampled_from(["DE", "FR", "NL", "GB"]),
    st.from_regex(r"[A-Z0-9]{11,30}", fullmatch=True),
)


def _accepts_valid_data(env: IngestEnv, operation: Any, seen: dict[int, int]) -> None:
    @given(case=operation.as_strategy(), iban=_IBANS)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case, iban: str) -> None:  # type: ignore[type-arg]
        destination = case.body.get("destination") if isinstance(case.body, dict) else None
        if isinstance(destination, dict) and isinstance(destination.get("iban"), str):
            destination["iban"] = iban
        headers = {**env.a.auth, "Idempotency-Key": str(uuid.uuid4())}
        response = case.call_and_validate(
            headers=headers,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                positive_data_acceptance,
            ],
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    check()


def test_schema_admits_only_what_the_server_accepts(default_limits_env: IngestEnv) -> None:
    """Positive data (valid per the document) is always 202 (ST202 in schemathesis
    terms), and nothing is ever a 5xx."""
    env = default_limits_env
    schema = schemathesis.openapi.from_url(f"{env.url}/openapi.json")
    statuses: dict[str, dict[int, int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.method.upper() == "POST":
            _accepts_valid_data(env, operation, statuses.setdefault(operation.path, {}))
    # Every generated request was valid data, and every one was accepted.
    assert {path: set(seen) for path, seen in statuses.items()} == {
        "/v1/deposits": {202},
        "/v1/withdrawals": {202},
    }
