"""RFC 9457 problem details: one stable `type` per kind of error.

Each service subclasses `Problem` with its own `TITLES` (kind -> status, title); the kinds
every service can meet are in `COMMON_TITLES`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.responses import JSONResponse

PROBLEM_BASE = "https://paystream.dev/problems/"
MEDIA_TYPE = "application/problem+json"

COMMON_TITLES: dict[str, tuple[int, str]] = {
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "payload-too-large": (413, "Request body too large"),
    "internal-error": (500, "Internal error"),
    "service-unavailable": (503, "Service unavailable"),
}


class Problem(Exception):
    """Raised anywhere in a request; rendered as application/problem+json."""

    TITLES: ClassVar[dict[str, tuple[int, str]]] = COMMON_TITLES

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
        self.status, self.title = self.TITLES[kind]
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
