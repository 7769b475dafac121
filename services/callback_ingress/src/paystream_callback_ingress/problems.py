"""RFC 9457 problem details of the callback ingress: one stable `type` per kind."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

PROBLEM_BASE = "https://paystream.dev/problems/"
MEDIA_TYPE = "application/problem+json"

TITLES = {
    "invalid-signature": (400, "Callback signature missing, malformed or wrong"),
    "stale-signature": (400, "Callback timestamp outside the tolerance"),
    "malformed-callback": (400, "Callback body cannot be parsed"),
    "unknown-connection": (404, "No such connection for this gateway"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "payload-too-large": (413, "Request body too large"),
    "internal-error": (500, "Internal error"),
    "broker-unavailable": (503, "Cannot accept callbacks right now"),
    "connection-unavailable": (503, "The connection cannot verify callbacks right now"),
}


class Problem(Exception):
    def __init__(
        self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status, self.title = TITLES[kind]
        self.detail = detail
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
        body.update(self.extra)
        return JSONResponse(body, self.status, headers=self.headers, media_type=MEDIA_TYPE)
