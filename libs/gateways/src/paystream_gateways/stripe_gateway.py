"""Stripe, through the official SDK's async client.

Deposits are PaymentIntents created and confirmed in one call; withdrawals are Transfers
to the user's connected account (a `stripe_account` destination, `acct_...`), grouped by
our key so a lookup by `transfer_group` is a strongly consistent "did this attempt
execute?" (and `metadata.paystream_reference` names the attempt in webhooks). Bank details
are declined before any call (`destination_unsupported`, retry elsewhere): Stripe moves
money to connected accounts, not to IBANs. Every write carries
our Idempotency-Key; the SDK's own retries are off (the caller owns retry policy, and the
SDK would otherwise invent random keys).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import stripe

from paystream_core.statuses import TransactionType
from paystream_gateways.aiohttp_pool import AiohttpTransport, skip_cookieless_responses
from paystream_gateways.credentials import Credentials
from paystream_gateways.destinations import (
    BANK,
    STRIPE_ACCOUNT,
    destination_type,
    stripe_account,
    unsupported,
)
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
from paystream_gateways.transport import classify_transport_error, resend_hook, timeouts

PROVIDER = "stripe"
DEFAULT_API_BASE = "https://api.stripe.com"

# Declines where the acquirer or network, not the issuer or the customer, said no: another
# gateway may well succeed. Issuer answers (insufficient funds, fraud, do not honor...)
# would be the same everywhere, and unknown codes are treated like them.
SOFT_DECLINES = frozenset(
    {
        "processing_error",
        "try_again_later",
        "issuer_not_available",
        "reenter_transaction",
        "currency_not_supported",
        "card_not_supported",
        "payment_method_required",
        "destination_unsupported",
        "balance_insufficient",  # our platform balance at Stripe, not the user's
    }
)

_CALLBACK_KINDS = {
    "payment_intent": TransactionType.DEPOSIT,
    "transfer": TransactionType.WITHDRAWAL,
}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _declined(code: str, message: str, reference: str | None) -> Declined:
    return Declined(code, message, code in SOFT_DECLINES, reference)


def intent_outcome(intent: Mapping[str, Any]) -> Outcome:
    """A PaymentIntent (as a dict) -> our outcome."""
    pi_id = str(intent.get("id", ""))
    status = intent.get("status")
    if status == "succeeded":
        return Succeeded(pi_id)
    if status in ("processing", "requires_capture", "requires_confirmation"):
        return Pending(pi_id)
    if status == "requires_action":
        action = intent.get("next_action") or {}
        redirect = action.get("redirect_to_url") or {}
        # use_stripe_sdk actions have no URL: the front end finishes them with the secret.
        return ActionRequired(pi_id, _str(redirect.get("url")) or "")
    if status == "canceled":
        reason = _str(intent.get("cancellation_reason")) or "canceled"
        return Declined("canceled", f"payment intent canceled: {reason}", False, pi_id)
    error = intent.get("last_payment_error") or {}
    if status == "requires_payment_method" and error:
        code = _str(error.get("decline_code")) or _str(error.get("code")) or "declined"
        return _declined(code, _str(error.get("message")) or "declined", pi_id)
    return Pending(pi_id)  # requires_payment_method without an error: awaiting the customer


def transfer_outcome(transfer: Mapping[str, Any]) -> Outcome:
    tr_id = str(transfer.get("id", ""))
    if transfer.get("reversed"):
        return Declined("transfer_reversed", "the transfer was reversed", False, tr_id)
    return Succeeded(tr_id)  # transfers move the money synchronously


def _connected_account(destination: Mapping[str, str] | None) -> str | None:
    """The connected account to pay: a `stripe_account` destination (what the API seals),
    or the `stripe_account` field that destinations built by callers other than the API
    carried next to bank details before the typed destination existed (the adapter
    contract tests still do). The caller's metadata is never a destination: it is stored
    readable, and the destination must stay sealed."""
    if destination is not None and destination_type(destination) == BANK:
        return destination.get(STRIPE_ACCOUNT) or None
    return stripe_account(destination)


def _decline_or_raise(exc: stripe.StripeError, *, withdrawal: bool = False) -> Declined:
    """Classify an SDK error: return a Declined when it is a decline, raise otherwise."""
    status = exc.http_status
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error: dict[str, Any] = body.get("error") or {}
    code = _str(error.get("code")) or (exc.code if isinstance(exc.code, str) else None)
    message = _str(error.get("message")) or str(exc.user_message or type(exc).__name__)
    if isinstance(exc, stripe.CardError):
        intent = error.get("payment_intent") or {}
        decline = _str(error.get("decline_code")) or code or "card_declined"
        return _declined(decline, message, _str(intent.get("id")))
    if isinstance(exc, stripe.APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, httpx.TransportError):
            raise classify_transport_error(PROVIDER, cause) from exc
        raise Ambiguous(PROVIDER, AmbiguousReason.CONNECTION_LOST, message) from exc
    if isinstance(exc, stripe.IdempotencyError) or status == 409:
        raise Ambiguous(
            PROVIDER, AmbiguousReason.IDEMPOTENCY_CONFLICT, message, code=code, http_status=status
        ) from exc
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        raise NotExecuted(
            PROVIDER, NotExecutedReason.UNAUTHORIZED, message, code=code, http_status=status
        ) from exc
    if isinstance(exc, stripe.RateLimitError):
        raise NotExecuted(
            PROVIDER, NotExecutedReason.RATE_LIMITED, message, code=code, http_status=status
        ) from exc
    if isinstance(exc, stripe.InvalidRequestError):
        if withdrawal and code == "balance_insufficient":
            return _declined(code, message, None)
        if withdrawal and error.get("param") == "destination":
            return Declined("invalid_destination", message, False, None)
        raise NotExecuted(
            PROVIDER, NotExecutedReason.REJECTED, message, code=code, http_status=status
        ) from exc
    reason = (
        AmbiguousReason.SERVER_ERROR
        if status is None or status >= 500
        else AmbiguousReason.BAD_RESPONSE
    )
    raise Ambiguous(PROVIDER, reason, message, code=code, http_status=status) from exc


# What `StripeClient.raw_request_async` reads as options, not parameters (stripe's
# extract_options_from_dict, and `base`).
_RAW_REQUEST_OPTIONS = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
        "base",
    }
)


class _HTTPXOverAiohttp(stripe.HTTPXClient):
    """The SDK's httpx client, with aiohttp's connections under httpx (`aiohttp_pool`: a
    fraction of httpcore's CPU per call). The SDK keeps talking httpx, so its error
    handling (httpx errors -> APIConnectionError with the httpx error as cause) and the
    tracing of httpx calls are unchanged. It verifies TLS with the SDK's CA bundle, as its
    own client does."""

    def __init__(self, timeout: httpx.Timeout, on_resend: Callable[[], None] | None) -> None:
        super().__init__(timeout=timeout)
        verify = ssl.create_default_context(cafile=stripe.ca_bundle_path)
        self._client_async = skip_cookieless_responses(
            httpx.AsyncClient(transport=AiohttpTransport(verify, on_resend=on_resend))
        )


class StripeGateway:
    def __init__(self, credentials: Credentials, options: ClientOptions) -> None:
        self._http = _HTTPXOverAiohttp(timeouts(options), resend_hook(options, PROVIDER))
        self._client = stripe.StripeClient(
            credentials["api_key"],
            base_addresses={"api": credentials.get("api_base") or DEFAULT_API_BASE},
            http_client=self._http,
            max_network_retries=0,
        )
        # The previous secret still verifies while the provider switches to the new one.
        self._webhook_secrets = webhook_secrets(credentials)
        self._return_url = credentials.get("return_url") or ""
        self._tolerance = options.callback_tolerance_s

    def __repr__(self) -> str:
        return "StripeGateway()"

    @property
    def provider(self) -> str:
        return PROVIDER

    async def deposit(self, request: PaymentRequest) -> Outcome:
        if not request.payment_method:
            return _declined(
                "payment_method_required", "stripe deposits need a payment method id", None
            )
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "confirm": True,
            "payment_method": request.payment_method,
            "metadata": request.provider_metadata(),
        }
        return_url = request.return_url or self._return_url
        if return_url:
            params["return_url"] = return_url
        try:
            intent = await self._create("/v1/payment_intents", params, request.idempotency_key)
        except stripe.StripeError as exc:
            return _decline_or_raise(exc)
        return intent_outcome(intent)

    async def withdraw(self, request: PaymentRequest) -> Outcome:
        destination = _connected_account(request.destination)
        if destination is None:
            # Bank details: Stripe pays out only to connected accounts (a Transfer); another
            # gateway can take it. Nothing was sent, so the fallback is safe.
            return unsupported(PROVIDER, destination_type(request.destination), STRIPE_ACCOUNT)
        params: stripe.params.TransferCreateParams = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "destination": destination,
            "transfer_group": request.idempotency_key,
            "metadata": request.provider_metadata(),
        }
        try:
            transfer = await self._create("/v1/transfers", params, request.idempotency_key)
        except stripe.StripeError as exc:
            return _decline_or_raise(exc, withdrawal=True)
        return transfer_outcome(transfer)

    async def _create(
        self, path: str, params: Mapping[str, Any], idempotency_key: str
    ) -> Mapping[str, Any]:
        """POST a create with our Idempotency-Key; the answer as the SDK's parsed JSON.

        The SDK's raw request is its typed `create_async` without building StripeObjects
        we would only turn back into a dict (a sixth of the SDK's CPU per call): the same
        form encoding, headers, and errors raised for every non-2xx answer."""
        # raw_request takes these keys out of the parameters as request options (the
        # Idempotency-Key header among them): one in `params` would silently change the
        # request instead of being sent.
        taken = _RAW_REQUEST_OPTIONS.intersection(params)
        if taken:
            raise ValueError(f"not Stripe parameters here: {sorted(taken)}")
        response = await self._client.raw_request_async(
            "post", path, idempotency_key=idempotency_key, **params
        )
        data = response.data
        if not isinstance(data, dict):
            raise Ambiguous(PROVIDER, AmbiguousReason.BAD_RESPONSE, "answer is not an object")
        return data

    async def status(self, query: StatusQuery) -> StatusResult:
        try:
            if query.kind == TransactionType.DEPOSIT:
                return await self._deposit_status(query)
            return await self._transfer_status(query)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return NotFound(conclusive=True)  # retrieve by id is consistent
            return _decline_or_raise(exc)
        except stripe.StripeError as exc:
            return _decline_or_raise(exc)

    async def _deposit_status(self, query: StatusQuery) -> StatusResult:
        payment_intents = self._client.v1.payment_intents
        if query.provider_reference:
            intent = await payment_intents.retrieve_async(query.provider_reference)
            return intent_outcome(intent.to_dict())
        key = query.idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        found = await payment_intents.search_async(
            {"query": f"metadata['paystream_reference']:'{key}'", "limit": 1}
        )
        if found.data:
            return intent_outcome(found.data[0].to_dict())
        # Stripe search lags writes (up to minutes): absence here proves nothing yet.
        return NotFound(conclusive=False)

    async def _transfer_status(self, query: StatusQuery) -> StatusResult:
        transfers = self._client.v1.transfers
        if query.provider_reference:
            transfer = await transfers.retrieve_async(query.provider_reference)
            return transfer_outcome(transfer.to_dict())
        listed = await transfers.list_async({"transfer_group": query.idempotency_key, "limit": 1})
        if listed.data:
            return transfer_outcome(listed.data[0].to_dict())
        return NotFound(conclusive=True)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> None:
        signature = header(headers, "Stripe-Signature")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackRejected("malformed", "body is not UTF-8") from None
        failure: stripe.SignatureVerificationError | None = None
        for secret in self._webhook_secrets:
            try:
                # The SDK's own check (constant-time, several v1 allowed); tolerance below,
                # so that future timestamps are refused too and the clock can be injected.
                stripe.WebhookSignature.verify_header(text, signature, secret, tolerance=None)
                failure = None
                break
            except stripe.SignatureVerificationError as exc:
                failure = failure or exc
        if failure is not None:
            raise CallbackRejected("signature", str(failure.user_message or failure)) from None
        assert signature is not None  # verify_header refuses a missing header
        stamp = next(p[2:] for p in signature.split(",") if p.startswith("t="))
        current = time.time() if now is None else now
        if abs(current - int(stamp)) > self._tolerance:
            raise CallbackRejected("stale", f"timestamp outside the {self._tolerance}s tolerance")

    def parse_callback(self, body: bytes) -> CallbackEvent:
        try:
            event = parse_json(body)
            obj = event["data"]["object"]
            object_type = obj["object"]
            event_id, event_type = str(event["id"]), str(event["type"])
            created = datetime.fromtimestamp(int(event["created"]), UTC)
        except (ValueError, KeyError, TypeError) as exc:
            raise CallbackRejected("malformed", f"not a stripe event: {exc!r}") from None
        kind = _CALLBACK_KINDS.get(object_type)
        if kind is None:  # an endpoint may be subscribed to more than we act on
            raise CallbackRejected("unsupported", f"{event_type} events are not used")
        metadata = obj.get("metadata") or {}
        request_info = event.get("request") or {}
        reference = _str(metadata.get("paystream_reference")) or _str(
            request_info.get("idempotency_key")
        )
        outcome = intent_outcome(obj) if kind == TransactionType.DEPOSIT else transfer_outcome(obj)
        return CallbackEvent(
            provider=PROVIDER,
            event_id=event_id,
            event_type=event_type,
            kind=kind,
            provider_reference=str(obj.get("id", "")),
            reference=reference,
            outcome=outcome,
            occurred_at=created,
        )

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def _build(credentials: Credentials, options: ClientOptions) -> StripeGateway:
    return StripeGateway(credentials, options)


SPEC = ProviderSpec(
    name=PROVIDER,
    factory=_build,
    fields=(
        CredentialField("api_key", secret=True, help="secret key, sk_live_... / sk_test_..."),
        CredentialField("webhook_secret", secret=True, help="endpoint signing secret, whsec_..."),
        PREVIOUS_WEBHOOK_SECRET,
        CredentialField(
            "api_base", secret=False, required=False, default=DEFAULT_API_BASE, help="API URL"
        ),
        CredentialField(
            "return_url", secret=False, required=False, help="where 3-D Secure returns the user"
        ),
    ),
)
