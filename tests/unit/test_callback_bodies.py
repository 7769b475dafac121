"""How a provider callback's raw body travels in `paystream.callback.received.v1`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from paystream_messaging.callbacks import CallbackReceived, decode_body


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b'{"id": "evt_1"}', "utf-8"),
        (b"\xff\xfe not utf-8", "base64"),
        # Valid UTF-8, but no PostgreSQL text column (the callback log) can hold NUL.
        (b'{"id": "evt\x00"}', "base64"),
    ],
)
def test_bodies_travel_as_text_only_when_text_can_hold_them(body: bytes, encoding: str) -> None:
    callback = CallbackReceived("jsonpay", uuid.uuid4(), uuid.uuid4(), datetime.now(UTC), body)
    text, used = callback.encoded_body()
    assert used == encoding
    assert "\x00" not in text
    assert decode_body(text, used) == body
