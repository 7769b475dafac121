"""Stripe's wire format for the calls paystream makes, under `/stripe` (so the SDK's
`api_base` is `http://<sandbox>/stripe`).

Form-encoded requests with bracketed keys, Bearer secret keys, JSON objects with an
`object` field, error bodies `{"error": {type, code, decline_code, message, param}}` with
Stripe's status codes (400 invalid, 401 key, 402 card error, 404 missing, 409 key in use,
5xx api_error), Idempotency-Key replays (header `Idempotent-Replayed: true`), and
`Stripe-Signature: t=...,v1=...` webhooks signed by the official SDK's own routine.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import stripe
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

PROVIDER = "stripe"
API_VERSION = "2026-10-28.endive"

# Stripe's documented test payment methods, and what they do.
TEST_PAYMENT_METHODS: dict[str, Decision] = {
    "pm_card_chargeDeclined": Decision("declined", failure_code="generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": Decision(
        "declined", failure_code="insufficient_funds"
    ),
    "pm_card_chargeDeclinedFraudulent": Decision("declined", failure_code="fraudulent"),
    "pm_card_chargeDeclinedProcessingError": Decision("declined", failure_code="processing_error"),
    "pm_card_authenticationRequired": Decision("action_required"),
    "pm_card_threeDSecure2Required": Decision("action_required"),
    "pm_sepaDebit": Decision("pending", settle_to=("succeeded", None)),
    "pm_usBankAccount": Decision("pending", settle_to=("succeeded", None)),
}

_INTENT_STATUS = {
    "succeeded": "succeeded",
    "pending": "processing",
    "action_required": "requires_action",
    "declined": "requires_payment_method",
}
_EVENT_TYPE = {
    "succeeded": "payment_intent.succeeded",
    "pending": "payment_intent.processing",
    "action_required": "payment_intent.requires_action",
    "declined": "payment_intent.payment_failed",
}
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_SEARCH_CLAUSE = re.compile(
    r"""^(metadata\[['"](?P<key>[^'"]+)['"]\]|status):['"](?P<value>[^'"]*)['"]$"""
)


def decode_form(body: bytes) -> dict[str, Any]:
    """`a[b][c]=v&l[0]=x` -> nested dicts; numeric keys become lists (Stripe's encoding)."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body.decode(), keep_blank_values=True):
        head, _, rest = raw_key.partition("[")
        parts = [head, *_BRACKETS.findall("[" + rest)] if rest else [head]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"conflicting parameter {raw_key}")
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            value = _lists(value)
            if value and all(k.isdigit() for k in value):
                value = [value[k] for k in sorted(value, key=int)]
        out[key] = value
    return out


def _json(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> StoredResponse:
    return StoredResponse(
        status,
        json.dumps(payload, indent=2).encode(),
        "application/json",
        {"Request-Id": new_id("req_"), "Stripe-Version": API_VERSION, **(headers or {})},
    )


def _error(status: int, type_: str, message: str, **fields: Any) -> StoredResponse:
    return _json(status, {"error": {"type": type_, "message": message, **fields}})


SHAPES = ErrorShapes(
    unavailable=lambda: _error(503, "api_error", "Stripe is temporarily unavailable."),
    server_error=lambda: _error(500, "api_error", "An unknown error occurred."),
    idempotency_mismatch=lambda key: _error(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were"
        f" first used with. Try using a key other than '{key}' if you meant to execute a"
        " different request.",
    ),
    idempotency_in_progress=lambda key: _error(
        409,
        "invalid_request_error",
        "There is currently another in-progress request using this Idempotent Key (that"
        " probably means you submitted twice, and the other request is still going"
        f" through): {key}. Please try again later.",
        code="idempotency_key_in_use",
    ),
    invalid=lambda message: _error(400, "invalid_request_error", message),
)


def _intent(p: Payment) -> dict[str, Any]:
    status = _INTENT_STATUS[p.status]
    error = None
    if p.status == "declined":
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": p.failure_code,
            "message": _decline_message(p.failure_code),
        }
    next_action = None
    if p.status == "action_required":
        next_action = {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": p.redirect_url, "return_url": p.extra.get("return_url")},
        }
    return {
        "id": p.id,
        "object": "payment_intent",
        "amount": p.amount_minor,
        "amount_capturable": 0,
        "amount_received": p.amount_minor if p.status == "succeeded" else 0,
        "capture_method": "automatic",
        "client_secret": f"{p.id}_secret_{p.extra.get('secret', '')}",
        "confirmation_method": "automatic",
        "created": p.created,
        "currency": p.currency,
        "last_payment_error": error,
        "latest_charge": p.extra.get("charge") if p.status == "succeeded" else None,
        "livemode": False,
        "metadata": p.metadata,
        "next_action": next_action,
        "payment_method": p.payment_method,
        "payment_method_types": ["card"],
        "status": status,
        "cancellation_reason": None,
    }


def _transfer(p: Payment) -> dict[str, Any]:
    reversed_ = p.extra.get("reversed") == "true"
    reversals = [
        {
            "id": p.extra.get("reversal", ""),
            "object": "transfer_reversal",
            "amount": p.amount_minor,
            "currency": p.currency,
            "transfer": p.id,
            "metadata": {},
        }
    ]
    return {
        "id": p.id,
        "object": "transfer",
        "amount": p.amount_minor,
        "amount_reversed": p.amount_minor if reversed_ else 0,
        "balance_transaction": p.extra.get("balance_transaction"),
        "created": p.created,
        "currency": p.currency,
        "description": None,
        "destination": p.destination.get("account"),
        "livemode": False,
        "metadata": p.metadata,
        "reversals": {
            "object": "list",
            "data": reversals if reversed_ else [],
            "has_more": False,
            "total_count": 1 if reversed_ else 0,
            "url": f"/v1/transfers/{p.id}/reversals",
        },
        "reversed": reversed_,
        "source_transaction": None,
        "transfer_group": p.extra.get("transfer_group"),
    }


def _object(p: Payment) -> dict[str, Any]:
    return _intent(p) if p.kind == "deposit" else _transfer(p)


def _decline_message(code: str | None) -> str:
    if code == "insufficient_funds":
        return "Your card has insufficient funds."
    if code == "fraudulent":
        return "Your card was declined."
    return f"Your card was declined ({code})."


def _transfer_event(p: Payment) -> str:
    # Stripe's transfer events: transfer.created (the money moved: transfers settle
    # synchronously), transfer.reversed (taken back), transfer.updated (description or
    # metadata edited; the sandbox never edits). There is no transfer.paid or .failed.
    return "transfer.reversed" if p.extra.get("reversed") == "true" else "transfer.created"


def render_event(p: Payment) -> tuple[str, str, bytes]:
    event_type = _EVENT_TYPE[p.status] if p.kind == "deposit" else _transfer_event(p)
    event_id = new_id("evt_")
    event = {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": _object(p)},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": new_id("req_"), "idempotency_key": p.idempotency_key},
        "type": event_type,
    }
    return event_id, event_type, json.dumps(event, indent=2).encode()


def sign(body: bytes, secret: str) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return {"Stripe-Signature": header}


HOOKS = ProviderHooks(render_event=render_event, sign=sign, media_type="application/json")


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":  # the SDK's older style: key as the basic-auth user
        try:
            return base64.b64decode(value).decode().partition(":")[0] or None
        except ValueError:
            return None
    return None


def _send(stored: StoredResponse, request: Request) -> Response:
    headers = dict(stored.headers)
    key = request.headers.get("idempotency-key")
    if key:
        headers["Idempotency-Key"] = key
    return Response(stored.body, stored.status, headers=headers, media_type=stored.media_type)


def router(sandbox: Sandbox) -> APIRouter:
    api = APIRouter(prefix="/stripe", include_in_schema=False)

    def authenticate(request: Request) -> str | StoredResponse:
        key = _api_key(request)
        if key is None:
            return _error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the"
                " Authorization header, using Bearer auth.",
            )
        if sandbox.account(PROVIDER, key) is None and not key.startswith(("sk_test_", "rk_test_")):
            return _error(401, "invalid_request_error", f"Invalid API Key provided: {key[:8]}****")
        return key

    @api.post("/v1/payment_intents")
    async def create_intent(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, StoredResponse):
            return _send(account, request)
        try:
            params = decode_form(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _send(SHAPES.invalid(f"Invalid request body: {exc}"), request)
        invalid = _check_amount(params)
        if (
            invalid is None
            and params.get("confirm") in ("true", True)
            and not params.get("payment_method")
        ):
            invalid = _error(
                400,
                "invalid_request_error",
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        if invalid is not None:
            return _send(invalid, request)
        metadata = _metadata(params)
        payment_method = str(params.get("payment_method") or "") or None
        default = TEST_PAYMENT_METHODS.get(payment_method or "", Decision("succeeded"))
        if params.get("confirm") not in ("true", True):
            default = Decision("pending")  # created, not confirmed: nothing is charged yet

        def execute(decision: Decision) -> StoredResponse:
            payment = Payment(
                id=new_id("pi_"),
                provider=PROVIDER,
                account=account,
                kind="deposit",
                reference=metadata.get("paystream_reference"),
                idempotency_key=request.headers.get("idempotency-key"),
                amount_minor=int(params["amount"]),
                currency=str(params["currency"]),
                status=decision.status,
                created=int(time.time()),
                payment_method=payment_method,
                metadata=metadata,
                extra={
                    "secret": new_id(""),
                    "charge": new_id("ch_"),
                    "return_url": str(params.get("return_url") or ""),
                },
            )
            payment.redirect_url = (
                f"{str(request.base_url).rstrip('/')}/_sandbox/redirect/{PROVIDER}/{payment.id}"
            )
            sandbox.record(payment, decision)
            if payment.status == "declined":
                return _error(
                    402,
                    "card_error",
                    _decline_message(payment.failure_code),
                    code="card_declined",
                    decline_code=payment.failure_code,
                    payment_intent=_intent(payment),
                )
            return _json(200, _intent(payment))

        stored = await sandbox.write(
            provider=PROVIDER,
            account=account,
            idempotency_key=request.headers.get("idempotency-key"),
            fingerprint=json.dumps(["POST", "/v1/payment_intents", params], sort_keys=True),
            scenario=metadata.get(SCENARIO_KEY),
            default=default,
            shapes=SHAPES,
            execute=execute,
        )
        return _send(stored, request)

    @api.get("/v1/payment_intents/search")
    async def search_intents(request: Request, query: str = "", limit: int = 10) -> Response:
        account = authenticate(request)
        if isinstance(account, StoredResponse):
            return _send(account, request)
        if sandbox.fault(PROVIDER).down:
            return _send(SHAPES.unavailable(), request)
        await sandbox.simulate_latency(PROVIDER)
        matches: list[tuple[str | None, str]] = []
        for clause in (c.strip() for c in query.split(" AND ") if c.strip()):
            m = _SEARCH_CLAUSE.match(clause)
            if m is None:
                return _send(SHAPES.invalid(f"Invalid search query: {clause}"), request)
            matches.append((m.group("key"), m.group("value")))
        found = [
            _intent(p)
            for p in sandbox.find(PROVIDER, account)
            if p.kind == "deposit"
            and all(
                (p.metadata.get(k) == v) if k is not None else (_INTENT_STATUS[p.status] == v)
                for k, v in matches
            )
        ]
        return _send(
            _json(
                200,
                {
                    "object": "search_result",
                    "data": found[: max(1, min(limit, 100))],
                    "has_more": len(found) > limit,
                    "next_page": None,
                    "url": "/v1/payment_intents/search",
                },
            ),
            request,
        )

    @api.get("/v1/payment_intents/{intent_id}")
    async def retrieve_intent(request: Request, intent_id: str) -> Response:
        return await _retrieve(request, intent_id, "deposit", "payment_intent")

    @api.post("/v1/transfers")
    async def create_transfer(request: Request) -> Response:
        account = authenticate(request)
        if isinstance(account, StoredResponse):
            return _send(account, request)
        try:
            params = decode_form(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _send(SHAPES.invalid(f"Invalid request body: {exc}"), request)
        invalid = _check_amount(params)
        destination = str(params.get("destination") or "")
        if invalid is None and not destination:
            invalid = _error(
                400,
                "invalid_request_error",
                "Missing required param: destination.",
                code="parameter_missing",
                param="destination",
            )
        if invalid is None and not destination.startswith("acct_"):
            invalid = _error(
                400,
                "invalid_request_error",
                f"No such destination: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        if invalid is not None:
            return _send(invalid, request)
        metadata = _metadata(params)

        def execute(decision: Decision) -> StoredResponse:
            if decision.status == "declined":
                # Transfers are refused with an invalid_request_error; nothing executes.
                code = decision.failure_code or "transfer_failed"
                if code == "invalid_destination":
                    return _error(
                        400,
                        "invalid_request_error",
                        f"No such destination: '{destination}'",
                        code="resource_missing",
                        param="destination",
                    )
                return _error(400, "invalid_request_error", f"Transfer refused: {code}.", code=code)
            payment = Payment(
                id=new_id("tr_"),
                provider=PROVIDER,
                account=account,
                kind="withdrawal",
                reference=metadata.get("paystream_reference"),
                idempotency_key=request.headers.get("idempotency-key"),
                amount_minor=int(params["amount"]),
                currency=str(params["currency"]),
                status="succeeded",
                created=int(time.time()),
                metadata=metadata,
                destination={"account": destination},
                extra={
                    "transfer_group": str(params.get("transfer_group") or ""),
                    "balance_transaction": new_id("txn_"),
                    "reversal": new_id("trr_"),
                },
            )
            # Transfers settle synchronously: pending or action outcomes do not apply.
            sandbox.record(payment, Decision("succeeded"))
            return _json(200, _transfer(payment))

        stored = await sandbox.write(
            provider=PROVIDER,
            account=account,
            idempotency_key=request.headers.get("idempotency-key"),
            fingerprint=json.dumps(["POST", "/v1/transfers", params], sort_keys=True),
            scenario=metadata.get(SCENARIO_KEY),
            default=Decision("succeeded"),
            shapes=SHAPES,
            execute=execute,
        )
        return _send(stored, request)

    @api.get("/v1/transfers")
    async def list_transfers(
        request: Request, transfer_group: str | None = None, limit: int = 10
    ) -> Response:
        account = authenticate(request)
        if isinstance(account, StoredResponse):
            return _send(account, request)
        if sandbox.fault(PROVIDER).down:
            return _send(SHAPES.unavailable(), request)
        await sandbox.simulate_latency(PROVIDER)
        found = [
            _transfer(p)
            for p in reversed(sandbox.find(PROVIDER, account))
            if p.kind == "withdrawal"
            and (transfer_group is None or p.extra.get("transfer_group") == transfer_group)
        ]
        return _send(
            _json(
                200,
                {
                    "object": "list",
                    "data": found[: max(1, min(limit, 100))],
                    "has_more": len(found) > limit,
                    "url": "/v1/transfers",
                },
            ),
            request,
        )

    @api.get("/v1/transfers/{transfer_id}")
    async def retrieve_transfer(request: Request, transfer_id: str) -> Response:
        return await _retrieve(request, transfer_id, "withdrawal", "transfer")

    async def _retrieve(request: Request, object_id: str, kind: str, name: str) -> Response:
        account = authenticate(request)
        if isinstance(account, StoredResponse):
            return _send(account, request)
        if sandbox.fault(PROVIDER).down:
            return _send(SHAPES.unavailable(), request)
        await sandbox.simulate_latency(PROVIDER)
        payment = sandbox.payments.get(object_id)
        if payment is None or payment.account != account or payment.kind != kind:
            return _send(
                _error(
                    404,
                    "invalid_request_error",
                    f"No such {name}: '{object_id}'",
                    code="resource_missing",
                    param="id" if kind == "withdrawal" else "intent",
                ),
                request,
            )
        return _send(_json(200, _object(payment)), request)

    @api.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def unknown(request: Request, path: str) -> Response:
        return _send(
            _error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({request.method}: /{path}).",
            ),
            request,
        )

    return api


def _check_amount(params: dict[str, Any]) -> StoredResponse | None:
    amount = params.get("amount")
    if amount is None:
        return _error(
            400,
            "invalid_request_error",
            "Missing required param: amount.",
            code="parameter_missing",
            param="amount",
        )
    if not str(amount).isdigit() or int(str(amount)) < 1:
        return _error(
            400,
            "invalid_request_error",
            "Invalid integer: amount must be at least 1.",
            code="parameter_invalid_integer",
            param="amount",
        )
    currency = params.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        return _error(
            400,
            "invalid_request_error",
            f"Invalid currency: {currency}.",
            code="parameter_invalid_string",
            param="currency",
        )
    return None


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata") or {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
