"""The callback ingress's problem kinds (RFC 9457): one stable `type` per kind."""

from __future__ import annotations

from typing import ClassVar

from paystream_web.problems import COMMON_TITLES, MEDIA_TYPE
from paystream_web.problems import Problem as _Problem

__all__ = ["MEDIA_TYPE", "TITLES", "Problem"]

TITLES: dict[str, tuple[int, str]] = {
    **COMMON_TITLES,
    "invalid-signature": (400, "Callback signature missing, malformed or wrong"),
    "stale-signature": (400, "Callback timestamp outside the tolerance"),
    "malformed-callback": (400, "Callback body cannot be parsed"),
    "unknown-connection": (404, "No such connection for this gateway"),
    "broker-unavailable": (503, "Cannot accept callbacks right now"),
    "connection-unavailable": (503, "The connection cannot verify callbacks right now"),
}


class Problem(_Problem):
    TITLES: ClassVar[dict[str, tuple[int, str]]] = TITLES
