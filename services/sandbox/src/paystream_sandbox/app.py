"""`create_app`: the three emulated providers and the admin API in one FastAPI app.

/stripe/v1/...                  Stripe (point the SDK's api_base at <url>/stripe)
/jsonpay/v1/...                 JSONPay REST
/soapbank/v1/PaymentService     SOAPBank SOAP 1.1
/_sandbox/...                   admin: accounts, faults, ledger, callbacks, reset
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from paystream_sandbox import admin_api, jsonpay_api, soapbank_api, stripe_api
from paystream_sandbox.core import Sandbox
from paystream_sandbox.settings import SandboxSettings


def create_app(settings: SandboxSettings | None = None) -> FastAPI:
    sandbox = Sandbox(settings or SandboxSettings())
    sandbox.hooks.update(
        {"stripe": stripe_api.HOOKS, "json": jsonpay_api.HOOKS, "soap": soapbank_api.HOOKS}
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    app = FastAPI(
        title="paystream provider sandbox",
        description="Stripe-, JSON- and SOAP-compatible fake providers with fault controls.",
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.include_router(admin_api.router(sandbox))
    app.include_router(stripe_api.router(sandbox))
    app.include_router(jsonpay_api.router(sandbox))
    app.include_router(soapbank_api.router(sandbox))
    return app
