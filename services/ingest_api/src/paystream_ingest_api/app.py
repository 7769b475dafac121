"""The ingest API: routes, error rendering, OpenAPI. Handlers live in handlers.py."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from paystream_ingest_api import handlers
from paystream_ingest_api.auth import authenticate
from paystream_ingest_api.deps import IngestDeps
from paystream_ingest_api.openapi import build_openapi
from paystream_ingest_api.problems import Problem
from paystream_ingest_api.requests import (
    IDEMPOTENCY_KEY_PATTERN,
    DepositRequest,
    WithdrawalRequest,
    account_id_valid,
    field_errors,
)
from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_telemetry.web import add_tracing
from paystream_web.edge import DirectRoute, EdgeMiddleware
from paystream_web.lifespan import closing_lifespan
from paystream_web.service import (
    add_operations_routes,
    install_problem_handlers,
    read_limited_body,
)

log = logging.getLogger(__name__)

_TRACEPARENT_LEN = 55


def create_app(deps: IngestDeps) -> FastAPI:
    app = FastAPI(
        lifespan=closing_lifespan(
            "ingest-api", log, deps.publisher, deps.sessions, deps.pool.close
        ),
        title="paystream ingest API",
        version="1.0.0",
        description="Deposits and withdrawals, accepted once Kafka acknowledged the command.",
        docs_url=None,
        redoc_url=None,
    )

    install_problem_handlers(
        app,
        Problem,
        unavailable=TRANSIENT_DB_ERRORS,
        retry_after_s=deps.settings.ingest_retry_after_s,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _validation_problem(list(exc.errors())).response(request.url.path)

    async def tenant_of(request: Request) -> uuid.UUID:
        return await authenticate(
            request.headers.get("authorization"),
            deps.sessions,
            deps.auth_cache,
            deps.settings.ingest_auth_cache_s,
        )

    async def command(request: Request, kind: str, model: type[DepositRequest]) -> Response:
        tenant = await tenant_of(request)
        key = _idempotency_key(request)
        body = await _read_json_body(request, deps.settings.ingest_max_body_bytes)
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors()
            if any(e["type"] == "json_invalid" for e in errors):
                raise Problem(
                    "malformed-json", f"body is not valid JSON: {errors[0]['msg']}"
                ) from None
            raise _validation_problem(list(errors)) from None
        traceparent = request.headers.get("traceparent")
        if traceparent is not None and len(traceparent) != _TRACEPARENT_LEN:
            traceparent = None  # malformed trace context is dropped, not propagated
        accepted = await handlers.accept_command(deps, tenant, key, kind, parsed, traceparent)
        return JSONResponse(accepted, status_code=202)

    @app.post("/v1/deposits", status_code=202, operation_id="createDeposit")
    async def create_deposit(request: Request) -> Response:
        return await command(request, "deposit", DepositRequest)

    @app.post("/v1/withdrawals", status_code=202, operation_id="createWithdrawal")
    async def create_withdrawal(request: Request) -> Response:
        return await command(request, "withdrawal", WithdrawalRequest)

    @app.get("/v1/transactions/{transaction_id}", operation_id="getTransaction")
    async def get_transaction(request: Request, transaction_id: str) -> Response:
        tenant = await tenant_of(request)
        try:
            txn = uuid.UUID(transaction_id)
        except ValueError:
            raise Problem("not-found", f"no transaction {transaction_id!r}") from None
        return JSONResponse(await handlers.transaction_snapshot(deps, tenant, txn))

    @app.get("/v1/accounts/{account_id}/balances", operation_id="getBalances")
    async def get_balances(request: Request, account_id: str) -> Response:
        tenant = await tenant_of(request)
        if not account_id_valid(account_id):
            # No account can have this id (a control character would not even reach the
            # database): the answer is the one any unknown account gets.
            raise Problem("not-found", f"no account {account_id!r}")
        return JSONResponse(await handlers.account_balances(deps, tenant, account_id))

    add_operations_routes(
        app,
        kafka_ping=deps.publisher.ping,
        sessions=deps.sessions,
        registry=deps.metrics.registry,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(
        EdgeMiddleware,
        requests=deps.metrics.requests,
        latency=deps.metrics.latency,
        routes=app.router.routes,
        handlers=app.exception_handlers,
        # The two POSTs are the volume: called straight from the edge (see paystream_web.edge).
        direct=[
            DirectRoute("/v1/deposits", create_deposit),
            DirectRoute("/v1/withdrawals", create_withdrawal),
        ],
    )
    add_tracing(app)  # outermost: the request's span covers the metrics middleware too
    return app


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key")
    if key is None or IDEMPOTENCY_KEY_PATTERN.fullmatch(key) is None:
        raise Problem(
            "missing-idempotency-key",
            "send an Idempotency-Key header of 1-255 printable ASCII characters"
            " (no control characters, no leading or trailing space)",
        )
    return key


def _validation_problem(errors: list[Any]) -> Problem:
    """422 whose detail names the first offending field and what is wrong with it."""
    fields = field_errors(errors)
    first = fields[0] if fields else {"field": "body", "message": "invalid"}
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return Problem(
        "validation-error",
        f"request is invalid: {first['field']}: {first['message']}{more}",
        errors=fields,
    )


async def _read_json_body(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise Problem("unsupported-media-type", "send Content-Type: application/json")
    return await read_limited_body(request, limit, Problem)
