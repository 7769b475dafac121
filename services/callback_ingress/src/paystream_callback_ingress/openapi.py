"""The callback ingress's OpenAPI document: FastAPI's paths, completed with what the route
really does (it reads the raw body, so FastAPI can infer neither body nor errors)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from paystream_callback_ingress.problems import MEDIA_TYPE, TITLES
from paystream_web.problems import problem_schema


def _problem(*kinds: str) -> dict[str, Any]:
    titles = "; ".join(f"{TITLES[k][1]} (type https://paystream.dev/problems/{k})" for k in kinds)
    return {
        "description": titles,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def build_openapi(app: FastAPI, gateway_pattern: str) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = problem_schema()
    op = doc["paths"]["/v1/callbacks/{gateway}/{connection_id}"]["post"]
    shapes = {
        "gateway": {"type": "string", "pattern": f"^{gateway_pattern}$"},
        "connection_id": {"type": "string", "format": "uuid"},
    }
    for parameter in op["parameters"]:
        parameter["schema"] = shapes[parameter["name"]]
    raw = {"schema": {"type": "string"}}
    op["requestBody"] = {
        "required": True,
        "description": "The provider's callback, verbatim: its signature covers these bytes.",
        "content": {"application/json": raw, "text/xml": raw, "application/soap+xml": raw},
    }
    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
    op["responses"] = {
        "200": {
            "description": "Stored in Kafka (status accepted), or signed but not a payment"
            " event (status ignored)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "400": _problem("invalid-signature", "stale-signature", "malformed-callback"),
        "404": _problem("unknown-connection", "not-found"),
        "405": _problem("method-not-allowed"),
        "413": _problem("payload-too-large"),
        "503": {
            **_problem("broker-unavailable", "connection-unavailable", "service-unavailable"),
            "headers": retry,
        },
    }
    for path in ("/healthz", "/readyz", "/metrics"):
        responses = doc["paths"][path]["get"]["responses"]
        if path == "/readyz":
            responses["503"] = {
                "description": "Kafka or PostgreSQL unreachable",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        if path == "/metrics":
            responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return doc
