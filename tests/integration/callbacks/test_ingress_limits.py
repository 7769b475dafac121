"""Callbacks the storage or the parser cannot take are 4xx at the ingress, never a 500:
nesting beyond the JSON bound (even validly signed), NUL in the strings that get stored,
impossible gateway codes in the path. Schemathesis and hypothesis drive the route."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from paystream_gateways import signing
from paystream_gateways.json_safety import MAX_JSON_DEPTH
from paystream_messaging.topics import CALLBACKS
from tests.integration.callbacks.conftest import MEDIA, SIGNATURE_HEADERS, Conn, Stack
from tests.support.kafka import end_offsets

pytestmark = pytest.mark.integration


def _published(stack: Stack) -> int:
    return end_offsets(stack.kafka_bootstrap, f"{stack.topic_prefix}.{CALLBACKS}", 3)


def _signed(conn: Conn, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": MEDIA[conn.provider],
        SIGNATURE_HEADERS[conn.provider]: signing.sign(conn.secret, body),
    }


def _nested(depth: int) -> bytes:
    return b'{"id": "evt_deep", "data": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("provider", ["json", "stripe"])
def test_deep_or_unstorable_json_is_malformed_not_a_crash(stack: Stack, provider: str) -> None:
    conn = stack.connect(stack.new_tenant(), provider)
    before = _published(stack)
    bodies = {
        "5000 levels": _nested(5000),
        "one past the bound": _nested(MAX_JSON_DEPTH),  # the object itself is one level
        "NUL in the event id": b'{"id": "evt\\u0000", "type": "x", "data": {}}',
        "lone surrogate": b'{"id": "evt\\ud800", "type": "x", "data": {}}',
    }
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:
        for name, body in bodies.items():
            response = client.post(conn.path, content=body, headers=_signed(conn, body))
            assert response.status_code == 400, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"].endswith("malformed-callback"), name
    assert _published(stack) == before


def test_deep_xml_is_malformed_not_a_crash(stack: Stack) -> None:
    conn = stack.connect(stack.new_tenant(), "soap")
    # expat and ElementTree build a tree without recursing (30,000 levels parse fine), so
    # XML needs no depth bound of its own: a deep document is just not a notification.
    body = b"<a>" * 2_000 + b"</a>" * 2_000  # within this stack's 16 KiB body limit
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:
        response = client.post(conn.path, content=body, headers=_signed(conn, body))
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith("malformed-callback")
    assert response.headers["content-type"] == "application/problem+json"


def test_impossible_paths_are_unknown_connections(stack: Stack) -> None:
    conn = stack.connect(stack.new_tenant(), "json")
    body = b"{}"
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:
        for path in (
            f"/v1/callbacks/json%00pay/{conn.id}",
            f"/v1/callbacks/%00/{conn.id}",
            f"/v1/callbacks/{'a' * 65}/{conn.id}",
            "/v1/callbacks/jsonpay/%00",
            f"/v1/callbacks/JSONPAY/{conn.id}",
        ):
            response = client.post(path, content=body, headers=_signed(conn, body))
            assert response.status_code == 404, (path, response.text)
            assert response.json()["type"].endswith("unknown-connection"), path


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _event_like(payload: Any) -> dict[str, Any]:
    return {"id": "evt_fuzz", "type": "payment.succeeded", "created": 1, "data": payload}


def test_any_signed_json_body_is_answered_without_a_server_error(stack: Stack) -> None:
    conns = [stack.connect(stack.new_tenant(), p) for p in ("json", "stripe")]
    with httpx.Client(base_url=stack.ingress_url, timeout=30) as client:

        @given(
            conn=st.sampled_from(conns),
            payload=_JSON | _JSON.map(_event_like),
            depth=st.integers(0, 200),
        )
        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        def check(conn: Conn, payload: Any, depth: int) -> None:
            body = b"[" * depth + json.dumps(payload).encode() + b"]" * depth
            response = client.post(conn.path, content=body, headers=_signed(conn, body))
            assert response.status_code in (200, 400), response.text

        check()


def test_schemathesis_finds_no_server_error(stack: Stack) -> None:
    """The documented route, fuzzed from its own OpenAPI document; half of the cases aim
    at a real connection so they get past the lookup to the signature check."""
    conn = stack.connect(stack.new_tenant(), "json")
    schema = schemathesis.openapi.from_url(f"{stack.ingress_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 4

    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case, real: bool) -> None:  # type: ignore[type-arg]
            if real and case.path_parameters is not None and "gateway" in case.path_parameters:
                case.path_parameters = {"gateway": conn.code, "connection_id": str(conn.id)}
            case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance, content_type_conformance]
            )

        check()
    assert uuid.UUID(str(conn.id))
