"""JSONPay, the JSON REST provider, under `/jsonpay` (see paystream_gateways.json_gateway
for the contract). Implemented independently of the adapter, signatures included, so a
contract test catches a mismatch instead of sharing a bug."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response

from paystream_sandbox.core import (
    SCENARIO_KEY,
    Decision,
    ErrorShapes,
    Payment,
    ProviderHooks,
    Sandbox,
    StoredResponse,
    new_id,
)

PROVIDER = "json"
SIGNATURE_HEADER = "JsonPay-Signature"
MERCHANT_HEADER = "JsonPay-Merchant"
_COLLECTIONS = {"payments": "deposit", "payouts": "withdrawal"}
_OBJECT = {"deposit": "payment", "withdrawal": "payout"}
_STATUS = {
    "succeeded": "succeeded",
    "pending": "pending",
    "action_required": "requires_action",
    "declined": "declined",
}


def _json(status: int, payload: dict[str, Any]) -> StoredResponse:
    return StoredResponse(
        status, json.dumps(payload).encode(), "application/json", {"Request-Id": new_id("jp_req_")}
    )


def _error(status: int, code: str, message: str) -> StoredResponse:
    return _json(status, {"error": {"code": code, "message": message}})


SHAPES = ErrorShapes(
    unavailable=lambda: _error(
        503, "service_unavailable", "JSONPay is unavailable; the request was not processed."
    ),
    server_error=lambda: _error(500, "internal_error", "internal error"),
    idempotency_mismatch=lambda key: _error(
        422, "idempotency_key_reused", f"Idempotency-Key {key} was used with another request body"
    ),
    idempotency_in_progress=lambda key: _error(
        409, "request_in_progress", f"a request with Idempotency-Key {key} is still in progress"
    ),
    invalid=lambda message: _error(400, "invalid_request", message),
)


def _hmac(secret: str, timestamp: str, payload: bytes) -> str:
    return hmac.new(
        secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256
    ).hexdigest()


def _payment_json(p: Payment) -> dict[str, Any]:
    declined = p.status == "declined"
    return {
        "id": p.id,
        "object": _OBJECT[p.kind],
        "reference": p.reference,
        "status": _STATUS[p.status],
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "country": p.country,
        "payment_method": p.payment_method,
        "redirect_url": p.redirect_url if p.status == "action_required" else None,
        "failure_code": p.failure_code if declined else None,
        "failure_message": f"declined: {p.failure_code}" if declined else None,
        "metadata": p.metadata,
        "created": p.created,
    }


def render_event(p: Payment) -> tuple[str, str, bytes]:
    event_id = new_id("jp_evt_")
    event_type = f"{_OBJECT[p.kind]}.{_STATUS[p.status]}"
    body = {
        "id": event_id,
        "type": event_type,
        "created": int(time.time()),
        "data": _payment_json(p),
    }
    return event_id, event_type, json.dumps(body).encode()


def sign(body: bytes, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    return {SIGNATURE_HEADER: f"t={ts},v1={_hmac(secret, ts, body)}"}


HOOKS = ProviderHooks(render_event=render_event, sign=sign, media_type="application/json")


def _send(stored: StoredResponse) -> Response:
    return Response(
        stored.body, stored.status, headers=stored.headers, media_type=stored.media_type
    )


def router(sandbox: Sandbox) -> APIRouter:
    api = APIRouter(prefix="/jsonpay", include_in_schema=False)

    async def authenticate(request: Request, body: bytes) -> str | StoredResponse:
        merchant = request.headers.get(MERCHANT_HEADER.lower(), "")
        account = sandbox.account(PROVIDER, merchant)
        if account is None or not account.api_secret:
            return _error(401, "unknown_merchant", "unknown merchant")
        fields = dict(
            part.strip().partition("=")[::2]
            for part in request.headers.get(SIGNATURE_HEADER.lower(), "").split(",")
        )
        ts, signature = fields.get("t", ""), fields.get("v1", "")
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        query: bytes = request.scope.get("query_string") or b""
        target = raw_path + (b"?" + query if query else b"")
        signed = request.method.encode() + b" " + target + b"\n" + body
        if not ts.isdigit() or not hmac.compare_digest(
            _hmac(account.api_secret, ts, signed), signature
        ):
            return _error(401, "invalid_signature", "request signature does not match")
        if abs(time.time() - int(ts)) > sandbox.settings.signature_tolerance_s:
            return _error(401, "stale_signature", "request timestamp outside tolerance")
        return merchant

    @api.post("/v1/{collection}")
    async def create(request: Request, collection: str) -> Response:
        kind = _COLLECTIONS.get(collection)
        if kind is None:
            return _send(_error(404, "not_found", f"no such endpoint /v1/{collection}"))
        body = await request.body()
        merchant = await authenticate(request, body)
        if isinstance(merchant, StoredResponse):
            return _send(merchant)
        try:
            params = json.loads(body)
            problem = _validate(params, kind)
        except ValueError:
            problem = "body is not JSON"
            params = {}
        if problem:
            return _send(SHAPES.invalid(problem))
        metadata = {str(k): str(v) for k, v in (params.get("metadata") or {}).items()}
        idempotency_key = request.headers.get("idempotency-key")

        def execute(decision: Decision) -> StoredResponse:
            prefix = "jp_pay_" if kind == "deposit" else "jp_po_"
            payment = Payment(
                id=new_id(prefix),
                provider=PROVIDER,
                account=merchant,
                kind="deposit" if kind == "deposit" else "withdrawal",
                reference=params["reference"],
                idempotency_key=idempotency_key,
                amount_minor=params["amount_minor"],
                currency=params["currency"],
                status=decision.status,
                created=int(time.time()),
                country=params.get("country"),
                payment_method=params.get("payment_method"),
                metadata=metadata,
                destination={str(k): str(v) for k, v in (params.get("destination") or {}).items()},
            )
            payment.redirect_url = (
                f"{str(request.base_url).rstrip('/')}/_sandbox/redirect/{PROVIDER}/{payment.id}"
            )
            sandbox.record(payment, decision)
            return _json(201, _payment_json(payment))

        stored = await sandbox.write(
            provider=PROVIDER,
            account=merchant,
            idempotency_key=idempotency_key,
            fingerprint=hashlib.sha256(
                collection.encode() + json.dumps(params, sort_keys=True).encode()
            ).hexdigest(),
            scenario=metadata.get(SCENARIO_KEY),
            default=Decision("succeeded"),
            shapes=SHAPES,
            execute=execute,
        )
        return _send(stored)

    @api.get("/v1/{collection}")
    async def list_by_reference(request: Request, collection: str, reference: str = "") -> Response:
        kind = _COLLECTIONS.get(collection)
        if kind is None:
            return _send(_error(404, "not_found", f"no such endpoint /v1/{collection}"))
        merchant = await authenticate(request, b"")
        if isinstance(merchant, StoredResponse):
            return _send(merchant)
        if sandbox.fault(PROVIDER).down:
            return _send(SHAPES.unavailable())
        await sandbox.simulate_latency(PROVIDER)
        found = [
            _payment_json(p)
            for p in sandbox.find(PROVIDER, merchant, kind=kind)
            if not reference or p.reference == reference
        ]
        return _send(_json(200, {"data": found}))

    @api.get("/v1/{collection}/{payment_id}")
    async def retrieve(request: Request, collection: str, payment_id: str) -> Response:
        kind = _COLLECTIONS.get(collection)
        merchant = await authenticate(request, b"")
        if isinstance(merchant, StoredResponse):
            return _send(merchant)
        if sandbox.fault(PROVIDER).down:
            return _send(SHAPES.unavailable())
        await sandbox.simulate_latency(PROVIDER)
        payment = sandbox.payments.get(payment_id)
        if payment is None or payment.account != merchant or payment.kind != kind:
            return _send(_error(404, "not_found", f"no {collection[:-1]} {payment_id}"))
        return _send(_json(200, _payment_json(payment)))

    return api


def _validate(params: object, kind: str) -> str | None:
    if not isinstance(params, dict):
        return "body must be a JSON object"
    if not isinstance(params.get("reference"), str) or not params["reference"]:
        return "reference is required"
    amount = params.get("amount_minor")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        return "amount_minor must be a positive integer"
    if not isinstance(params.get("currency"), str) or not re.fullmatch(
        r"[A-Z]{3}", params["currency"]
    ):
        return "currency must be an ISO 4217 code"
    if kind == "withdrawal" and not params.get("destination"):
        return "destination is required for payouts"
    meta = params.get("metadata", {})
    if not isinstance(meta, dict):
        return "metadata must be an object"
    return None
