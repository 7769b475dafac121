"""JSONPay: a JSON REST gateway over httpx (provider name `json`).

Wire contract (what the sandbox emulates; a real JSON provider maps onto the same shape):

- Requests carry `JsonPay-Merchant: <merchant_id>` and
  `JsonPay-Signature: t=<unix>,v1=<hex HMAC-SHA256(api_secret, "<t>.<METHOD> <path>\\n<body>")>`,
  plus `Idempotency-Key` on writes (same key + same body: the stored answer is replayed;
  same key + different body: 422 `idempotency_key_reused`).
- `POST /v1/payments` (deposit) and `POST /v1/payouts` (withdrawal) answer 201 with the
  payment object: `{id, object, reference, status, redirect_url, failure_code,
  failure_message, ...}`, status one of succeeded | pending | requires_action | declined |
  failed. Declines are answers, not errors.
- `GET /v1/<payments|payouts>?reference=<our key>` lists by our reference (consistent).
- Errors: `{"error": {"code", "message"}}`. 503 `service_unavailable` is documented as
  "refused before processing"; any other 5xx may have executed.
- Callbacks: `{id, type, created, data: <payment object>}` signed like requests but with
  the webhook secret over `<t>.<body>`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from paystream_core.statuses import TransactionType
from paystream_gateways import signing
from paystream_gateways.credentials import Credentials
from paystream_gateways.destinations import BANK, destination_type, unsupported
from paystream_gateways.errors import (
    Ambiguous,
    AmbiguousReason,
    CallbackRejected,
    NotExecuted,
    NotExecutedReason,
)
from paystream_gateways.json_safety import parse_json
from paystream_gateways.protocol import (
    ActionRequired,
    CallbackEvent,
    ClientOptions,
    Declined,
    NotFound,
    Outcome,
    PaymentRequest,
    Pending,
    StatusQuery,
    StatusResult,
    Succeeded,
    header,
)
from paystream_gateways.specs import (
    PREVIOUS_WEBHOOK_SECRET,
    CredentialField,
    ProviderSpec,
    webhook_secrets,
)
from paystream_gateways.transport import new_client, send

PROVIDER = "json"
SIGNATURE_HEADER = "JsonPay-Signature"
MERCHANT_HEADER = "JsonPay-Merchant"

SOFT_DECLINES = frozenset(
    {
        "processing_error",
        "temporarily_unavailable",
        "method_not_supported",
        "currency_not_supported",
        "country_not_supported",
        "limit_exceeded",
    }
)
_COLLECTIONS = {TransactionType.DEPOSIT: "payments", TransactionType.WITHDRAWAL: "payouts"}
_KINDS = {"payment": TransactionType.DEPOSIT, "payout": TransactionType.WITHDRAWAL}


def request_signing_payload(method: str, raw_path: bytes, body: bytes) -> bytes:
    return method.upper().encode() + b" " + raw_path + b"\n" + body


def payment_outcome(payment: Mapping[str, Any]) -> Outcome:
    ref = str(payment.get("id", ""))
    status = payment.get("status")
    if status == "succeeded":
        return Succeeded(ref)
    if status == "pending":
        return Pending(ref)
    if status == "requires_action":
        return ActionRequired(ref, str(payment.get("redirect_url") or ""))
    if status in ("declined", "failed"):
        code = str(payment.get("failure_code") or "declined")
        message = str(payment.get("failure_message") or code)
        return Declined(code, message, code in SOFT_DECLINES, ref)
    raise ValueError(f"unknown payment status {status!r}")


class JsonGateway:
    def __init__(self, credentials: Credentials, options: ClientOptions) -> None:
        self._client = new_client(options, PROVIDER, credentials["base_url"])
        self._merchant = credentials["merchant_id"]
        self._api_secret = credentials["api_secret"]
        # The previous secret still verifies while the provider switches to the new one.
        self._webhook_secrets = webhook_secrets(credentials)
        self._options = options
        # The create endpoints' URLs, merged with the base URL once (httpx parses and merges
        # a str path on every request): as httpx merges them, so the signed path is the same.
        self._create_urls: dict[str, httpx.URL] = {}

    def __repr__(self) -> str:
        return f"JsonGateway(merchant={self._merchant!r})"

    @property
    def provider(self) -> str:
        return PROVIDER

    async def deposit(self, request: PaymentRequest) -> Outcome:
        return await self._create(TransactionType.DEPOSIT, request)

    async def withdraw(self, request: PaymentRequest) -> Outcome:
        kind = destination_type(request.destination)
        if kind not in (BANK, None):  # a Stripe connected account: not reachable from here
            return unsupported(PROVIDER, kind, BANK)
        return await self._create(TransactionType.WITHDRAWAL, request)

    async def _create(self, kind: TransactionType, request: PaymentRequest) -> Outcome:
        body: dict[str, Any] = {
            "reference": request.idempotency_key,
            "amount_minor": request.amount_minor,
            "currency": request.currency,
            "country": request.country,
            "customer": {"account_id": request.account_id},
            "metadata": request.provider_metadata(),
        }
        if request.payment_method:
            body["payment_method"] = request.payment_method
        if request.return_url:
            body["return_url"] = request.return_url
        if kind == TransactionType.WITHDRAWAL:
            body["destination"] = dict(request.destination or {})
        path = f"/v1/{_COLLECTIONS[kind]}"
        url = self._create_urls.get(path)
        if url is None:
            url = self._create_urls[path] = self._client.build_request("POST", path).url
        status, payload = await self._call(
            "POST", url, body, idempotency_key=request.idempotency_key
        )
        if status not in (200, 201):
            raise self._error(status, payload)
        try:
            return payment_outcome(payload)
        except ValueError as exc:
            raise Ambiguous(PROVIDER, AmbiguousReason.BAD_RESPONSE, str(exc)) from None

    async def status(self, query: StatusQuery) -> StatusResult:
        collection = _COLLECTIONS[query.kind]
        if query.provider_reference:
            ref = quote(query.provider_reference, safe="")
            status, payload = await self._call("GET", f"/v1/{collection}/{ref}")
            if status == 404:
                return NotFound(conclusive=True)
            if status != 200:
                raise self._error(status, payload)
            found = [payload]
        else:
            status, payload = await self._call(
                "GET", f"/v1/{collection}", params={"reference": query.idempotency_key}
            )
            if status != 200:
                raise self._error(status, payload)
            found = list(payload.get("data") or [])
        if not found:
            return NotFound(conclusive=True)
        try:
            return payment_outcome(found[0])
        except ValueError as exc:
            raise Ambiguous(PROVIDER, AmbiguousReason.BAD_RESPONSE, str(exc)) from None

    async def _call(
        self,
        method: str,
        path: str | httpx.URL,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {MERCHANT_HEADER: self._merchant, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        req = self._client.build_request(
            method, path, content=content, headers=headers, params=params
        )
        req.headers[SIGNATURE_HEADER] = signing.sign(
            self._api_secret, request_signing_payload(method, req.url.raw_path, content)
        )
        response, raw = await send(self._client, PROVIDER, req, self._options.max_response_bytes)
        try:
            payload = parse_json(raw) if raw else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            if 200 <= response.status_code < 300:
                raise Ambiguous(
                    PROVIDER,
                    AmbiguousReason.BAD_RESPONSE,
                    "answer is not a JSON object",
                    http_status=response.status_code,
                )
            payload = {}
        return response.status_code, payload

    def _error(self, status: int, payload: dict[str, Any]) -> Exception:
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        assert isinstance(error, dict)
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or f"HTTP {status}")
        if code in ("idempotency_key_reused", "request_in_progress"):
            return Ambiguous(
                PROVIDER,
                AmbiguousReason.IDEMPOTENCY_CONFLICT,
                message,
                code=code,
                http_status=status,
            )
        if status == 503 and code == "service_unavailable":
            return NotExecuted(
                PROVIDER, NotExecutedReason.UNAVAILABLE, message, code=code, http_status=status
            )
        if status >= 500:
            return Ambiguous(
                PROVIDER, AmbiguousReason.SERVER_ERROR, message, code=code, http_status=status
            )
        if status in (401, 403):
            reason = NotExecutedReason.UNAUTHORIZED
        elif status == 429:
            reason = NotExecutedReason.RATE_LIMITED
        elif 300 <= status < 500:  # a redirect or a refusal: the handler never ran
            reason = NotExecutedReason.REJECTED
        else:
            return Ambiguous(
                PROVIDER, AmbiguousReason.BAD_RESPONSE, message, code=code, http_status=status
            )
        return NotExecuted(PROVIDER, reason, message, code=code, http_status=status)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> None:
        try:
            signing.verify(
                self._webhook_secrets,
                header(headers, SIGNATURE_HEADER),
                body,
                tolerance_s=self._options.callback_tolerance_s,
                now=now,
            )
        except signing.SignatureError as exc:
            raise CallbackRejected(exc.reason, str(exc)) from None

    def parse_callback(self, body: bytes) -> CallbackEvent:
        try:
            event = parse_json(body)
            data = event["data"]
            kind = _KINDS.get(data["object"])
            if kind is None:
                raise CallbackRejected("unsupported", f"{data['object']} events are not used")
            outcome = payment_outcome(data)
            occurred = datetime.fromtimestamp(int(event["created"]), UTC)
            event_id, event_type = str(event["id"]), str(event["type"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CallbackRejected("malformed", f"not a JSONPay event: {exc!r}") from None
        return CallbackEvent(
            provider=PROVIDER,
            event_id=event_id,
            event_type=event_type,
            kind=kind,
            provider_reference=str(data.get("id", "")),
            reference=data.get("reference") if isinstance(data.get("reference"), str) else None,
            outcome=outcome,
            occurred_at=occurred,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _build(credentials: Credentials, options: ClientOptions) -> JsonGateway:
    return JsonGateway(credentials, options)


SPEC = ProviderSpec(
    name=PROVIDER,
    factory=_build,
    fields=(
        CredentialField(
            "base_url", secret=False, help="API root, e.g. https://api.jsonpay.example"
        ),
        CredentialField("merchant_id", secret=False),
        CredentialField("api_secret", secret=True, help="signs our requests"),
        CredentialField("webhook_secret", secret=True, help="verifies their callbacks"),
        PREVIOUS_WEBHOOK_SECRET,
    ),
)
