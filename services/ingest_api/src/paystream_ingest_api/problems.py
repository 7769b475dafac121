"""RFC 9457 problem details: one stable `type` per kind of error."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

PROBLEM_BASE = "https://paystream.dev/problems/"
MEDIA_TYPE = "application/problem+json"

TITLES = {
    "malformed-json": (400, "Malformed JSON"),
    "missing-idempotency-key": (400, "Missing or invalid Idempotency-Key"),
    "unauthorized": (401, "Missing or invalid API key"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "idempotency-conflict": (409, "Idempotency-Key reused with a different request"),
    "payload-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-error": (422, "Request failed validation"),
    "broker-unavailable": (503, "Cannot accept commands right now"),
    "internal-error": (500, "Internal error"),
}


class Problem(Exception):
    """Raised anywhere in a request; rendered as application/problem+json."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status, self.title = TITLES[kind]
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def response(self, instance: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return JSONResponse(body, self.status, headers=self.headers, media_type=MEDIA_TYPE)


def problem_schema() -> dict[str, Any]:
    """The OpenAPI schema of a problem body."""
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
