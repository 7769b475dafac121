"""The ingest API's problem kinds (RFC 9457): one stable `type` per kind of error."""

from __future__ import annotations

from typing import ClassVar

from paystream_web.problems import COMMON_TITLES, MEDIA_TYPE, problem_schema
from paystream_web.problems import Problem as _Problem

__all__ = ["MEDIA_TYPE", "TITLES", "Problem", "problem_schema"]

TITLES: dict[str, tuple[int, str]] = {
    **COMMON_TITLES,
    "malformed-json": (400, "Malformed JSON"),
    "missing-idempotency-key": (400, "Missing or invalid Idempotency-Key"),
    "unauthorized": (401, "Missing or invalid API key"),
    "idempotency-conflict": (409, "Idempotency-Key reused with a different request"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-error": (422, "Request failed validation"),
    "broker-unavailable": (503, "Cannot accept commands right now"),
}


class Problem(_Problem):
    TITLES: ClassVar[dict[str, tuple[int, str]]] = TITLES
