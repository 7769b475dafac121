"""Untrusted JSON is parsed with bounded nesting and storable strings: too deep, NUL or a
lone surrogate is JsonRejected (a ValueError the gateways turn into a malformed callback),
never a RecursionError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream_gateways import CallbackRejected, ClientOptions, Credentials
from paystream_gateways.json_gateway import JsonGateway
from paystream_gateways.json_safety import (
    MAX_JSON_DEPTH,
    JsonRejected,
    nesting_depth_exceeds,
    parse_json,
)
from paystream_gateways.stripe_gateway import StripeGateway


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab'), inner, max_size=3)
    ),
    max_leaves=40,
)


@given(_JSON, st.integers(0, 12))
def test_depth_is_measured_exactly_on_valid_json(value: Any, limit: int) -> None:
    # brackets and quotes inside strings must not count
    data = json.dumps(value).encode()
    assert nesting_depth_exceeds(data, limit) == (_depth(value) > limit)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 5_000, 100_000])
def test_too_deep_is_rejected_before_parsing(depth: int) -> None:
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(JsonRejected, match="nested deeper than 64"):
            parse_json(data)
    # unbalanced (not JSON) is refused too, never parsed into a recursion
    with pytest.raises(JsonRejected):
        parse_json(b"[" * depth)


def test_the_bound_itself_parses() -> None:
    data = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert _depth(parse_json(data)) == MAX_JSON_DEPTH


@pytest.mark.parametrize(
    "data",
    [b'{"id": "a\\u0000"}', b'{"a\\u0000": 1}', b'["\\ud800"]', b'["\\udc00x"]', b"not json"],
)
def test_unstorable_or_malformed_is_rejected(data: bytes) -> None:
    with pytest.raises(JsonRejected):
        parse_json(data)


def test_ordinary_text_parses() -> None:
    data = '{"m": "line\\nbreak \\ud83d\\ude00 \\"[[[\\" ü"}'.encode()
    assert parse_json(data) == {"m": 'line\nbreak 😀 "[[[" ü'}


def _gateways() -> list[Any]:
    options = ClientOptions()
    json_gateway = JsonGateway(
        Credentials(
            {
                "base_url": "http://127.0.0.1:9",
                "merchant_id": "m",
                "api_secret": "s",
                "webhook_secret": "w",
            }
        ),
        options,
    )
    stripe = StripeGateway(
        Credentials(
            {"api_key": "sk_test_x", "webhook_secret": "whsec_x", "api_base": "http://127.0.0.1:9"}
        ),
        options,
    )
    return [json_gateway, stripe]


@pytest.mark.parametrize("gateway", _gateways(), ids=["json", "stripe"])
def test_a_deep_callback_is_malformed_not_a_recursion_error(gateway: Any) -> None:
    deep = b'{"id": "evt", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(CallbackRejected) as rejected:
        gateway.parse_callback(deep)
    assert rejected.value.reason == "malformed"
