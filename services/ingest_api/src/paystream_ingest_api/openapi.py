"""The OpenAPI document: FastAPI's paths, completed with what the handlers really do
(raw-body parsing means FastAPI cannot infer request bodies or error responses)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from paystream_ingest_api.problems import MEDIA_TYPE, TITLES, problem_schema
from paystream_ingest_api.requests import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    DepositRequest,
    WithdrawalRequest,
)

_REF = "#/components/schemas/{model}"


def _problem(kind: str) -> dict[str, Any]:
    _, title = TITLES[kind]
    return {
        "description": f"{title} (type https://paystream.dev/problems/{kind})",
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _responses(ok: tuple[str, str, str], *kinds: str) -> dict[str, Any]:
    status, description, schema = ok
    out: dict[str, Any] = {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }
    for kind in kinds:
        code = str(TITLES[kind][0])
        if code in out:  # two problem kinds share 400: describe both
            out[code]["description"] += f"; {_problem(kind)['description']}"
        else:
            out[code] = _problem(kind)
    if "503" in out:
        out["503"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}
        }
    return out


_MONEY_STRING = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
_SCHEMAS: dict[str, Any] = {
    "Accepted": {
        "type": "object",
        "required": ["transaction_id", "status", "idempotent_replay", "links"],
        "properties": {
            "transaction_id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["accepted"]},
            "idempotent_replay": {"type": "boolean"},
            "transaction_status": {"type": "string", "description": "current status, once stored"},
            "version": {"type": "integer"},
            "links": {"type": "object", "properties": {"self": {"type": "string"}}},
        },
    },
    "Transaction": {
        "type": "object",
        "required": ["transaction_id", "type", "status", "version", "amount", "currency"],
        "properties": {
            "transaction_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string", "enum": ["deposit", "withdrawal"]},
            "status": {
                "type": "string",
                "enum": [
                    "received",
                    "processing",
                    "action_required",
                    "pending",
                    "unknown",
                    "succeeded",
                    "failed",
                    "rejected",
                ],
            },
            "version": {"type": "integer"},
            "account_id": {"type": "string"},
            "country": {"type": "string"},
            "amount": _MONEY_STRING,
            "amount_minor": {"type": "integer"},
            "currency": {"type": "string"},
            "payment_method": {"type": ["string", "null"]},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "destination": {
                "type": ["object", "null"],
                "description": "Withdrawals: the destination's mask; the details stay sealed.",
                "properties": {
                    "masked": {
                        "type": "string",
                        "description": "Bank: `DE89 **** 3000`; Stripe connected account:"
                        " `acct_…1234`.",
                    }
                },
            },
            "gateway": {"type": ["string", "null"]},
            "provider_reference": {"type": ["string", "null"]},
            "failure": {
                "type": ["object", "null"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "attempts": {
                "type": "array",
                "description": "Every call to a gateway, first first.",
                "items": {
                    "type": "object",
                    "properties": {
                        "seq": {"type": "integer"},
                        "gateway": {"type": "string"},
                        "status": {"type": "string"},
                        "provider_reference": {"type": ["string", "null"]},
                        "error": {
                            "type": ["object", "null"],
                            "properties": {
                                "class": {"type": "string"},
                                "code": {"type": ["string", "null"]},
                                "message": {"type": ["string", "null"]},
                            },
                        },
                        "route_reason": {
                            "type": ["string", "null"],
                            "description": "Why routing chose this gateway, e.g. `priority 1`,"
                            " `priority 1; weight 70 of 100 (draw 0.42)`, `demoted: ...`"
                            " (null for attempts made before it was recorded).",
                        },
                        "started_at": {"type": "string", "format": "date-time"},
                        "finished_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "Balances": {
        "type": "object",
        "required": ["account_id", "balances"],
        "properties": {
            "account_id": {"type": "string"},
            "country": {"type": "string"},
            "balances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "currency": {"type": "string"},
                        "available": _MONEY_STRING,
                        "held": _MONEY_STRING,
                        "available_minor": {"type": "integer"},
                        "held_minor": {"type": "integer"},
                    },
                },
            },
        },
    },
    "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
    "Problem": problem_schema(),
}

_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_PATTERN.pattern}$"},
    "description": (
        "1-255 printable ASCII characters, no space at either end. Same key + same body ->"
        " same transaction; same key + other body -> 409."
    ),
}
# Path parameters as the server reads them: anything else is an unknown resource (404).
_PATH_PARAMETERS = {
    "transaction_id": {"type": "string", "format": "uuid"},
    "account_id": {"type": "string", "pattern": ID_PATTERN},
}
_TRACEPARENT = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "W3C trace context, propagated onto the command's CloudEvent.",
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_SCHEMAS)
    for request_model in (DepositRequest, WithdrawalRequest):
        request_schema = request_model.model_json_schema(ref_template=_REF)
        schemas.update(request_schema.pop("$defs", {}))
        schemas[request_model.__name__] = request_schema
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    paths = doc["paths"]
    command_errors = (
        "malformed-json",
        "missing-idempotency-key",
        "unauthorized",
        "idempotency-conflict",
        "payload-too-large",
        "unsupported-media-type",
        "validation-error",
        "broker-unavailable",
        "service-unavailable",
    )
    for path, model in (
        ("/v1/deposits", "DepositRequest"),
        ("/v1/withdrawals", "WithdrawalRequest"),
    ):
        op = paths[path]["post"]
        op["security"] = [{"bearer": []}]
        op["parameters"] = [_IDEMPOTENCY, _TRACEPARENT]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
        }
        op["responses"] = _responses(
            ("202", "Accepted: Kafka acknowledged the command", "Accepted"), *command_errors
        )
    for path, schema in (
        ("/v1/transactions/{transaction_id}", "Transaction"),
        ("/v1/accounts/{account_id}/balances", "Balances"),
    ):
        op = paths[path]["get"]
        op["security"] = [{"bearer": []}]
        op["responses"] = _responses(
            ("200", "OK", schema), "unauthorized", "not-found", "service-unavailable"
        )
        for parameter in op["parameters"]:
            parameter["schema"] = dict(_PATH_PARAMETERS[parameter["name"]])
    paths["/healthz"]["get"]["responses"] = _responses(("200", "Process is alive", "Health"))
    paths["/readyz"]["get"]["responses"] = _responses(
        ("200", "Kafka and PostgreSQL reachable", "Health")
    )
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "Kafka or PostgreSQL unreachable",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
    }
    paths["/metrics"]["get"]["responses"] = {
        "200": {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
    return doc
