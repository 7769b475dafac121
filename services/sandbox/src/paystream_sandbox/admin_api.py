"""The sandbox's own control API, under `/_sandbox` (tests and demos drive faults here).

GET  /_sandbox/health
PUT  /_sandbox/accounts                 {provider, account, api_secret?, webhook_url?,
                                         webhook_secret?}
GET  /_sandbox/accounts                 (secrets never returned)
GET  /_sandbox/faults/{provider}
PUT  /_sandbox/faults/{provider}        Faults (replaces; omitted fields reset to defaults)
POST /_sandbox/reset                    {accounts: false}
GET  /_sandbox/ledger                   ?provider&reference&idempotency_key&kind
GET  /_sandbox/calls                    write calls received per provider (refused included)
GET  /_sandbox/callbacks                ?provider&reference&event_id
GET  /_sandbox/redirect/{provider}/{id} ?result=succeeded|failed  (the customer's 3-D Secure)
POST /_sandbox/settle/{provider}/{id}   {result: succeeded|failed, code?}
POST /_sandbox/reverse/stripe/{id}      reverse a Stripe transfer (webhook transfer.reversed)
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from paystream_sandbox.core import PROVIDERS, Account, Faults, Sandbox, mask


class AccountIn(BaseModel):
    provider: Literal["stripe", "json", "soap"]
    account: str = Field(min_length=1, description="stripe: the secret key; others: merchant id")
    api_secret: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


class ResetIn(BaseModel):
    accounts: bool = False


class SettleIn(BaseModel):
    result: Literal["succeeded", "failed"] = "succeeded"
    code: str = "insufficient_funds"


def _account_out(a: Account) -> dict[str, Any]:
    return {
        "provider": a.provider,
        "account": mask(a.account),
        "webhook_url": a.webhook_url,
        "has_api_secret": bool(a.api_secret),
        "has_webhook_secret": bool(a.webhook_secret),
    }


def router(sandbox: Sandbox) -> APIRouter:
    api = APIRouter(prefix="/_sandbox", tags=["sandbox admin"])

    def _provider(provider: str) -> str:
        if provider not in PROVIDERS:
            raise HTTPException(
                404, f"unknown provider {provider!r} (have: {', '.join(PROVIDERS)})"
            )
        return provider

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.put("/accounts")
    async def put_account(body: AccountIn) -> dict[str, Any]:
        existing = sandbox.account(body.provider, body.account)
        account = Account(
            body.provider,
            body.account,
            api_secret=body.api_secret or (existing.api_secret if existing else None),
            webhook_url=body.webhook_url or (existing.webhook_url if existing else None),
            webhook_secret=body.webhook_secret or (existing.webhook_secret if existing else None),
        )
        return _account_out(sandbox.upsert_account(account))

    @api.get("/accounts")
    async def list_accounts() -> dict[str, Any]:
        return {"data": [_account_out(a) for a in sandbox.accounts.values()]}

    @api.get("/faults/{provider}")
    async def get_faults(provider: str) -> Faults:
        return sandbox.fault(_provider(provider))

    @api.put("/faults/{provider}")
    async def put_faults(provider: str, faults: Faults) -> Faults:
        sandbox.faults[_provider(provider)] = faults
        return faults

    @api.post("/reset")
    async def reset(body: ResetIn | None = None) -> dict[str, str]:
        sandbox.reset(accounts=bool(body and body.accounts))
        return {"status": "reset"}

    @api.get("/ledger")
    async def ledger(
        provider: str | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
        kind: str | None = None,
    ) -> dict[str, Any]:
        rows = [
            p.ledger_entry()
            for p in sandbox.payments.values()
            if (provider is None or p.provider == provider)
            and (reference is None or p.reference == reference)
            and (idempotency_key is None or p.idempotency_key == idempotency_key)
            and (kind is None or p.kind == kind)
        ]
        return {"data": rows, "count": len(rows)}

    @api.get("/calls")
    async def calls() -> dict[str, int]:
        return dict(sandbox.calls)

    @api.get("/callbacks")
    async def callbacks(
        provider: str | None = None, reference: str | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        rows = [
            d
            for d in sandbox.deliveries
            if (provider is None or d["provider"] == provider)
            and (reference is None or d["reference"] == reference)
            and (event_id is None or d["event_id"] == event_id)
        ]
        return {"data": rows, "count": len(rows)}

    @api.get("/redirect/{provider}/{payment_id}", response_class=HTMLResponse)
    async def redirect(
        provider: str, payment_id: str, result: Literal["succeeded", "failed"] = "succeeded"
    ) -> str:
        payment = sandbox.payments.get(payment_id)
        if payment is None or payment.provider != _provider(provider):
            raise HTTPException(404, "no such payment")
        if payment.status == "action_required":
            if result == "succeeded":
                sandbox.transition(payment, "succeeded")
            else:
                sandbox.transition(payment, "declined", "authentication_failed")
        return f"<html><body>Sandbox payment {payment.id}: {payment.status}</body></html>"

    @api.post("/settle/{provider}/{payment_id}")
    async def settle(provider: str, payment_id: str, body: SettleIn) -> dict[str, Any]:
        payment = sandbox.payments.get(payment_id)
        if payment is None or payment.provider != _provider(provider):
            raise HTTPException(404, "no such payment")
        if payment.status not in ("pending", "action_required"):
            raise HTTPException(409, f"payment is {payment.status}, not pending")
        if body.result == "succeeded":
            sandbox.transition(payment, "succeeded")
        else:
            sandbox.transition(payment, "declined", body.code)
        return payment.ledger_entry()

    @api.post("/reverse/{provider}/{payment_id}")
    async def reverse(provider: str, payment_id: str) -> dict[str, Any]:
        payment = sandbox.payments.get(payment_id)
        if payment is None or payment.provider != _provider(provider):
            raise HTTPException(404, "no such payment")
        if provider != "stripe" or payment.kind != "withdrawal":
            raise HTTPException(409, "only Stripe transfers can be reversed")
        if payment.status != "succeeded":
            raise HTTPException(409, f"payment is {payment.status}, not succeeded")
        sandbox.reverse(payment)
        return payment.ledger_entry()

    return api
