"""Schemathesis drives the API from its own OpenAPI document: no input may cause a 5xx,
and every status code and content type returned must be documented."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.integration.ingest.conftest import IngestEnv

pytestmark = pytest.mark.integration


def test_no_server_errors(ingest_env: IngestEnv) -> None:
    # schemathesis' own pytest plugin does not load under this pytest, so drive it directly.
    schema = schemathesis.openapi.from_url(f"{ingest_env.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            headers = {**ingest_env.a.auth, "Idempotency-Key": str(uuid.uuid4())}
            case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, status_code_conformance, content_type_conformance],
            )

        check()
