"""HMAC-SHA256 signatures in the `t=<unix>,v1=<hex>` form (the Stripe-Signature layout),
used by the JSON and SOAP gateways for requests and callbacks.

The signed message is `<t>.` followed by the payload bytes, so the timestamp cannot be
swapped without breaking the signature, and a stale one is rejected by the tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence


class SignatureError(Exception):
    """`reason` is "signature" (missing, malformed or wrong) or "stale" (outside tolerance)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def compute(secret: str, timestamp: int, payload: bytes) -> str:
    message = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, payload: bytes, *, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={compute(secret, ts, payload)}"


def verify(
    secret: str | Sequence[str],
    header_value: str | None,
    payload: bytes,
    *,
    tolerance_s: int,
    now: float | None = None,
) -> int:
    """Return the signed timestamp, or raise SignatureError. Several v1 entries are allowed
    (a provider rotating its secret signs with both), and several secrets (ours: the new
    one and, while providers switch over, the previous one)."""
    if not header_value:
        raise SignatureError("signature", "no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header_value.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("signature", "malformed timestamp") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("signature", "signature header lacks t= or v1=")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    # compare_digest on every pair, no early exit: timing reveals nothing useful.
    matched = False
    for key in secrets:
        expected = compute(key, timestamp, payload)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature", "signature does not match the payload")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError("stale", f"timestamp outside the {tolerance_s}s tolerance")
    return timestamp
