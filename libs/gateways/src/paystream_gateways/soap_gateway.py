"""SOAPBank: an XML/SOAP 1.1 gateway over httpx (provider name `soap`).

Wire contract (what the sandbox emulates):

- One endpoint; `SOAPAction: "urn:soapbank:payments:v1#<Operation>"`, operations
  `Deposit`, `Withdraw`, `GetPaymentStatus`. Merchant id and idempotency key travel in the
  SOAP header (`sb:Auth`; we also send the key as HTTP `Idempotency-Key`, which marks the
  request replayable for our transport); the raw body is signed in the HTTP header
  `X-SoapBank-Signature: t=<unix>,v1=<hex HMAC-SHA256(api_secret, "<t>.<body>")>`
  (an HMAC over the exact bytes is far simpler to get right than XML-DSig).
- Answers: `<sb:<Op>Response><sb:Payment>` with TransactionId, Reference, Operation,
  Status (APPROVED | PENDING | REDIRECT | DECLINED), RedirectUrl, ReasonCode, ReasonText.
- Faults (HTTP 500, or 503 for UNAVAILABLE): `soap:Client` means refused before processing,
  except IDEMPOTENCY_CONFLICT (the key was used: the first call may have run) and NOT_FOUND
  (status lookups); `soap:Server` is ambiguous unless its code is UNAVAILABLE, documented
  as "not processed".
- Callbacks: an envelope with `sb:PaymentNotification` (EventId, EventType, Created,
  Payment), signed with the webhook secret in the same header.

Every document we read goes through xml_safety: no DTDs, no entities, bounded size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

import httpx

from paystream_core.statuses import TransactionType
from paystream_gateways import signing
from paystream_gateways.credentials import Credentials
from paystream_gateways.destinations import BANK, destination_type, unsupported
from paystream_gateways.errors import (
    Ambiguous,
    AmbiguousReason,
    CallbackRejected,
    GatewayError,
    NotExecuted,
    NotExecutedReason,
)
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
from paystream_gateways.xml_safety import XmlRejected, parse_xml

PROVIDER = "soap"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SB_NS = "urn:soapbank:payments:v1"
SIGNATURE_HEADER = "X-SoapBank-Signature"

SOFT_DECLINES = frozenset(
    {
        "processing_error",
        "temporarily_unavailable",
        "currency_not_supported",
        "country_not_supported",
        "limit_exceeded",
    }
)
_OPERATIONS = {TransactionType.DEPOSIT: "Deposit", TransactionType.WITHDRAWAL: "Withdraw"}
_KINDS = {"Deposit": TransactionType.DEPOSIT, "Withdraw": TransactionType.WITHDRAWAL}

ET.register_namespace("soap", SOAP_NS)
ET.register_namespace("sb", SB_NS)


def _sb(tag: str) -> str:
    return f"{{{SB_NS}}}{tag}"


def _add(parent: Element, tag: str, text: str | None = None) -> Element:
    child = ET.SubElement(parent, _sb(tag))
    if text is not None:
        child.text = text
    return child


def envelope(auth: Mapping[str, str], operation: Element) -> bytes:
    root = ET.Element(f"{{{SOAP_NS}}}Envelope")
    head = ET.SubElement(root, f"{{{SOAP_NS}}}Header")
    auth_el = _add(head, "Auth")
    for name, value in auth.items():
        _add(auth_el, name, value)
    ET.SubElement(root, f"{{{SOAP_NS}}}Body").append(operation)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    assert isinstance(data, bytes)
    return data


def _text(parent: Element, tag: str) -> str | None:
    child = parent.find(_sb(tag))
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def payment_outcome(payment: Element) -> Outcome:
    ref = _text(payment, "TransactionId") or ""
    status = _text(payment, "Status")
    if status == "APPROVED":
        return Succeeded(ref)
    if status == "PENDING":
        return Pending(ref)
    if status == "REDIRECT":
        return ActionRequired(ref, _text(payment, "RedirectUrl") or "")
    if status == "DECLINED":
        code = (_text(payment, "ReasonCode") or "declined").lower()
        return Declined(code, _text(payment, "ReasonText") or code, code in SOFT_DECLINES, ref)
    raise ValueError(f"unknown payment status {status!r}")


def _body_child(root: Element) -> Element:
    body = root.find(f"{{{SOAP_NS}}}Body")
    if body is None or len(body) == 0:
        raise ValueError("no SOAP body")
    return body[0]


class SoapGateway:
    def __init__(self, credentials: Credentials, options: ClientOptions) -> None:
        self._endpoint = credentials["endpoint_url"]
        self._client = new_client(options, PROVIDER)  # the endpoint is a full URL, not a base
        self._endpoint_url: httpx.URL | None = None  # parsed once (httpx would per request)
        self._merchant = credentials["merchant_id"]
        self._api_secret = credentials["api_secret"]
        # The previous secret still verifies while the provider switches to the new one.
        self._webhook_secrets = webhook_secrets(credentials)
        self._options = options

    def __repr__(self) -> str:
        return f"SoapGateway(merchant={self._merchant!r})"

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
        operation = _OPERATIONS[kind]
        op = ET.Element(_sb(operation))
        _add(op, "Reference", request.idempotency_key)
        _add(op, "AmountMinor", str(request.amount_minor))
        _add(op, "Currency", request.currency)
        _add(op, "Country", request.country)
        _add(op, "AccountId", request.account_id)
        if request.payment_method:
            _add(op, "PaymentMethod", request.payment_method)
        if request.return_url:
            _add(op, "ReturnUrl", request.return_url)
        meta = _add(op, "Metadata")
        for key, value in request.provider_metadata().items():
            _add(meta, "Entry", value).set("key", key)
        if kind == TransactionType.WITHDRAWAL:
            beneficiary = _add(op, "Beneficiary")
            for name, value in (request.destination or {}).items():
                _add(beneficiary, "Field", value).set("name", name)
        answer = await self._call(operation, op, idempotency_key=request.idempotency_key)
        return self._outcome(answer)

    async def status(self, query: StatusQuery) -> StatusResult:
        op = ET.Element(_sb("GetPaymentStatus"))
        _add(op, "Reference", query.idempotency_key)
        _add(op, "Operation", _OPERATIONS[query.kind])
        if query.provider_reference:
            _add(op, "TransactionId", query.provider_reference)
        try:
            answer = await self._call("GetPaymentStatus", op)
        except NotExecuted as exc:
            if exc.code == "NOT_FOUND":
                return NotFound(conclusive=True)  # the bank looks up by reference: consistent
            raise
        return self._outcome(answer)

    def _outcome(self, answer: Element) -> Outcome:
        payment = answer.find(_sb("Payment"))
        try:
            if payment is None:
                raise ValueError(f"no Payment in {answer.tag}")
            return payment_outcome(payment)
        except ValueError as exc:
            raise Ambiguous(PROVIDER, AmbiguousReason.BAD_RESPONSE, str(exc)) from None

    async def _call(
        self, operation: str, op: Element, *, idempotency_key: str | None = None
    ) -> Element:
        auth = {"MerchantId": self._merchant}
        if idempotency_key:
            auth["IdempotencyKey"] = idempotency_key
        body = envelope(auth, op)
        if self._endpoint_url is None:
            self._endpoint_url = httpx.URL(self._endpoint)
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"{SB_NS}#{operation}"',
            SIGNATURE_HEADER: signing.sign(self._api_secret, body),
        }
        if idempotency_key:
            # The provider reads the key in the envelope; the header tells our transport the
            # request is replayable (aiohttp_pool: resent when a kept-alive connection closed).
            headers["Idempotency-Key"] = idempotency_key
        req = self._client.build_request("POST", self._endpoint_url, content=body, headers=headers)
        response, raw = await send(self._client, PROVIDER, req, self._options.max_response_bytes)
        status = response.status_code
        try:
            root = parse_xml(raw, max_bytes=self._options.max_response_bytes)
            child = _body_child(root)
        except (XmlRejected, ValueError) as exc:
            if status >= 500 or 200 <= status < 300:
                # After a 2xx or 5xx the call may have run: we cannot tell from this answer.
                reason = (
                    AmbiguousReason.SERVER_ERROR if status >= 500 else AmbiguousReason.BAD_RESPONSE
                )
                raise Ambiguous(
                    PROVIDER, reason, f"unreadable answer: {exc}", http_status=status
                ) from None
            raise NotExecuted(
                PROVIDER, NotExecutedReason.REJECTED, f"HTTP {status}", http_status=status
            ) from None
        if child.tag == f"{{{SOAP_NS}}}Fault":
            raise self._fault(child, status)
        if not 200 <= status < 300:
            raise Ambiguous(
                PROVIDER,
                AmbiguousReason.BAD_RESPONSE,
                f"HTTP {status} without a fault",
                http_status=status,
            )
        return child

    def _fault(self, fault: Element, status: int) -> GatewayError:
        faultcode = (fault.findtext("faultcode") or "").strip()
        message = (fault.findtext("faultstring") or "SOAP fault").strip()
        detail = fault.find("detail")
        code = (detail.findtext(_sb("ErrorCode")) if detail is not None else None) or ""
        side = faultcode.rpartition(":")[2]
        if code == "IDEMPOTENCY_CONFLICT":
            return Ambiguous(
                PROVIDER,
                AmbiguousReason.IDEMPOTENCY_CONFLICT,
                message,
                code=code,
                http_status=status,
            )
        if side == "Client":
            reason = {
                "AUTH_FAILED": NotExecutedReason.UNAUTHORIZED,
                "RATE_LIMITED": NotExecutedReason.RATE_LIMITED,
            }.get(code, NotExecutedReason.REJECTED)
            return NotExecuted(PROVIDER, reason, message, code=code or None, http_status=status)
        if code == "UNAVAILABLE":
            return NotExecuted(
                PROVIDER, NotExecutedReason.UNAVAILABLE, message, code=code, http_status=status
            )
        return Ambiguous(
            PROVIDER, AmbiguousReason.SERVER_ERROR, message, code=code or None, http_status=status
        )

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
            note = _body_child(parse_xml(body))
            if note.tag != _sb("PaymentNotification"):
                raise ValueError(f"unexpected element {note.tag}")
            payment = note.find(_sb("Payment"))
            if payment is None:
                raise ValueError("no Payment")
            kind = _KINDS[_text(payment, "Operation") or ""]
            outcome = payment_outcome(payment)
            event_id = _text(note, "EventId")
            if not event_id:
                raise ValueError("no EventId")
            occurred = datetime.fromtimestamp(int(_text(note, "Created") or ""), UTC)
        except XmlRejected as exc:
            raise CallbackRejected("malformed", str(exc)) from None
        except (ValueError, KeyError) as exc:
            raise CallbackRejected("malformed", f"not a SOAPBank notification: {exc}") from None
        return CallbackEvent(
            provider=PROVIDER,
            event_id=event_id,
            event_type=_text(note, "EventType") or "PaymentNotification",
            kind=kind,
            provider_reference=_text(payment, "TransactionId") or "",
            reference=_text(payment, "Reference"),
            outcome=outcome,
            occurred_at=occurred,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _build(credentials: Credentials, options: ClientOptions) -> SoapGateway:
    return SoapGateway(credentials, options)


SPEC = ProviderSpec(
    name=PROVIDER,
    factory=_build,
    fields=(
        CredentialField("endpoint_url", secret=False, help="the PaymentService endpoint URL"),
        CredentialField("merchant_id", secret=False),
        CredentialField("api_secret", secret=True, help="signs our requests"),
        CredentialField("webhook_secret", secret=True, help="verifies their callbacks"),
        PREVIOUS_WEBHOOK_SECRET,
    ),
)
