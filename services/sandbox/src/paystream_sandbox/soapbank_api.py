"""SOAPBank, the SOAP 1.1 provider, at `POST /soapbank/v1/PaymentService` (see
paystream_gateways.soap_gateway for the contract). Faults follow SOAP 1.1: HTTP 500 with
`soap:Fault` (503 when unavailable). Requests are parsed with DTDs and entities forbidden.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from typing import Literal
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_et  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException
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

PROVIDER = "soap"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SB_NS = "urn:soapbank:payments:v1"
SIGNATURE_HEADER = "X-SoapBank-Signature"
MAX_REQUEST_BYTES = 256 * 1024
_STATUS = {
    "succeeded": "APPROVED",
    "pending": "PENDING",
    "action_required": "REDIRECT",
    "declined": "DECLINED",
}
_OPERATION = {"deposit": "Deposit", "withdrawal": "Withdraw"}

ET.register_namespace("soap", SOAP_NS)
ET.register_namespace("sb", SB_NS)


def _q(tag: str) -> str:
    return f"{{{SB_NS}}}{tag}"


def _envelope(child: Element) -> bytes:
    root = ET.Element(f"{{{SOAP_NS}}}Envelope")
    ET.SubElement(root, f"{{{SOAP_NS}}}Body").append(child)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    assert isinstance(data, bytes)
    return data


def _xml(status: int, child: Element) -> StoredResponse:
    return StoredResponse(status, _envelope(child), "text/xml; charset=utf-8")


def _fault(side: str, code: str, message: str, status: int = 500) -> StoredResponse:
    fault = ET.Element(f"{{{SOAP_NS}}}Fault")
    ET.SubElement(fault, "faultcode").text = f"soap:{side}"
    ET.SubElement(fault, "faultstring").text = message
    ET.SubElement(ET.SubElement(fault, "detail"), _q("ErrorCode")).text = code
    return _xml(status, fault)


SHAPES = ErrorShapes(
    unavailable=lambda: _fault("Server", "UNAVAILABLE", "Service unavailable, not processed", 503),
    server_error=lambda: _fault("Server", "INTERNAL_ERROR", "Internal error"),
    idempotency_mismatch=lambda key: _fault(
        "Client", "IDEMPOTENCY_CONFLICT", f"IdempotencyKey {key} was used for another request"
    ),
    idempotency_in_progress=lambda key: _fault(
        "Client", "IDEMPOTENCY_CONFLICT", f"IdempotencyKey {key} is still being processed"
    ),
    invalid=lambda message: _fault("Client", "INVALID_REQUEST", message),
    replay_header=("X-SoapBank-Replayed", "true"),
)


def _payment_element(p: Payment) -> Element:
    el = ET.Element(_q("Payment"))
    values = {
        "TransactionId": p.id,
        "Reference": p.reference,
        "Operation": _OPERATION[p.kind],
        "Status": _STATUS[p.status],
        "AmountMinor": str(p.amount_minor),
        "Currency": p.currency,
        "RedirectUrl": p.redirect_url if p.status == "action_required" else None,
        "ReasonCode": (p.failure_code or "").upper() if p.status == "declined" else None,
        "ReasonText": f"Declined: {p.failure_code}" if p.status == "declined" else None,
    }
    for tag, value in values.items():
        if value is not None:
            ET.SubElement(el, _q(tag)).text = value
    return el


def render_event(p: Payment) -> tuple[str, str, bytes]:
    event_id = new_id("sb_evt_")
    event_type = f"{_OPERATION[p.kind]}{_STATUS[p.status].title()}"
    note = ET.Element(_q("PaymentNotification"))
    ET.SubElement(note, _q("EventId")).text = event_id
    ET.SubElement(note, _q("EventType")).text = event_type
    ET.SubElement(note, _q("Created")).text = str(int(time.time()))
    note.append(_payment_element(p))
    return event_id, event_type, _envelope(note)


def _hmac(secret: str, timestamp: str, payload: bytes) -> str:
    return hmac.new(
        secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256
    ).hexdigest()


def sign(body: bytes, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    return {SIGNATURE_HEADER: f"t={ts},v1={_hmac(secret, ts, body)}"}


HOOKS = ProviderHooks(render_event=render_event, sign=sign, media_type="text/xml; charset=utf-8")


def _send(stored: StoredResponse) -> Response:
    return Response(
        stored.body, stored.status, headers=stored.headers, media_type=stored.media_type
    )


def _text(parent: Element, tag: str) -> str | None:
    child = parent.find(_q(tag))
    return None if child is None or child.text is None else child.text.strip()


def router(sandbox: Sandbox) -> APIRouter:
    api = APIRouter(prefix="/soapbank", include_in_schema=False)

    @api.post("/v1/PaymentService")
    async def service(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_REQUEST_BYTES:
            return _send(SHAPES.invalid("request too large"))
        try:
            root = safe_et.fromstring(
                body, forbid_dtd=True, forbid_entities=True, forbid_external=True
            )
        except (DefusedXmlException, ET.ParseError) as exc:
            return _send(SHAPES.invalid(f"unreadable envelope: {type(exc).__name__}"))
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        auth = root.find(f"{{{SOAP_NS}}}Header/{_q('Auth')}")
        if soap_body is None or len(soap_body) == 0 or auth is None:
            return _send(SHAPES.invalid("envelope needs soap:Header/sb:Auth and soap:Body"))
        op = soap_body[0]
        action = request.headers.get("soapaction", "").strip('"')
        if action.rpartition("#")[2] != op.tag.rpartition("}")[2]:
            return _send(SHAPES.invalid("SOAPAction does not match the body operation"))
        merchant = _text(auth, "MerchantId") or ""
        account = sandbox.account(PROVIDER, merchant)
        if account is None or not account.api_secret:
            return _send(_fault("Client", "AUTH_FAILED", "unknown merchant"))
        fields = dict(
            part.strip().partition("=")[::2]
            for part in request.headers.get(SIGNATURE_HEADER.lower(), "").split(",")
        )
        ts, signature = fields.get("t", ""), fields.get("v1", "")
        if not ts.isdigit() or not hmac.compare_digest(
            _hmac(account.api_secret, ts, body), signature
        ):
            return _send(_fault("Client", "AUTH_FAILED", "signature does not match"))
        if abs(time.time() - int(ts)) > sandbox.settings.signature_tolerance_s:
            return _send(_fault("Client", "AUTH_FAILED", "signature timestamp outside tolerance"))
        name = op.tag.rpartition("}")[2]
        if name in ("Deposit", "Withdraw"):
            return _send(await _create(request, op, name, merchant, _text(auth, "IdempotencyKey")))
        if name == "GetPaymentStatus":
            return _send(await _status(op, merchant))
        return _send(SHAPES.invalid(f"unknown operation {name}"))

    async def _create(
        request: Request, op: Element, name: str, merchant: str, key: str | None
    ) -> StoredResponse:
        kind: Literal["deposit", "withdrawal"] = "deposit" if name == "Deposit" else "withdrawal"
        reference = _text(op, "Reference")
        amount = _text(op, "AmountMinor") or ""
        currency = _text(op, "Currency") or ""
        if not reference or not amount.isdigit() or int(amount) < 1 or len(currency) != 3:
            return SHAPES.invalid("Reference, AmountMinor (> 0) and Currency are required")
        metadata = {e.get("key", ""): e.text or "" for e in op.iter(_q("Entry"))}
        destination = {e.get("name", ""): e.text or "" for e in op.iter(_q("Field"))}
        if kind == "withdrawal" and not destination:
            return SHAPES.invalid("Beneficiary is required for Withdraw")

        def execute(decision: Decision) -> StoredResponse:
            payment = Payment(
                id=new_id("SB"),
                provider=PROVIDER,
                account=merchant,
                kind=kind,
                reference=reference,
                idempotency_key=key,
                amount_minor=int(amount),
                currency=currency,
                status=decision.status,
                created=int(time.time()),
                country=_text(op, "Country"),
                payment_method=_text(op, "PaymentMethod"),
                metadata=metadata,
                destination=destination,
            )
            payment.redirect_url = (
                f"{str(request.base_url).rstrip('/')}/_sandbox/redirect/{PROVIDER}/{payment.id}"
            )
            sandbox.record(payment, decision)
            answer = ET.Element(_q(f"{name}Response"))
            answer.append(_payment_element(payment))
            return _xml(200, answer)

        # The whole operation element is the request fingerprint (its canonical bytes).
        fingerprint = hashlib.sha256(ET.tostring(op, encoding="utf-8")).hexdigest()
        return await sandbox.write(
            provider=PROVIDER,
            account=merchant,
            idempotency_key=key,
            fingerprint=fingerprint,
            scenario=metadata.get(SCENARIO_KEY),
            default=Decision("succeeded"),
            shapes=SHAPES,
            execute=execute,
        )

    async def _status(op: Element, merchant: str) -> StoredResponse:
        if sandbox.fault(PROVIDER).down:
            return SHAPES.unavailable()
        await sandbox.simulate_latency(PROVIDER)
        reference = _text(op, "Reference")
        kind = "deposit" if _text(op, "Operation") == "Deposit" else "withdrawal"
        txn = _text(op, "TransactionId")
        for p in sandbox.find(PROVIDER, merchant, kind=kind):
            if (txn and p.id == txn) or (not txn and p.reference == reference):
                answer = ET.Element(_q("GetPaymentStatusResponse"))
                answer.append(_payment_element(p))
                return _xml(200, answer)
        return _fault("Client", "NOT_FOUND", f"no payment with reference {reference}")

    return api
