"""The provider sandbox over real HTTP, a callback receiver, and one `Case` per adapter
(credentials pointing at the sandbox, account registered with its webhook target)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from paystream_gateways import ClientOptions, Gateway, PaymentRequest, default_registry
from paystream_sandbox.app import create_app
from paystream_sandbox.client import SandboxAdmin
from paystream_sandbox.settings import SandboxSettings
from tests.integration.gateways.support import CallbackReceiver, serve_app

PROVIDERS = ["stripe", "json", "soap"]


@dataclass(frozen=True)
class Case:
    provider: str
    account: str
    api_secret: str | None
    webhook_secret: str
    credentials: dict[str, str]

    @property
    def callback_path(self) -> str:
        return f"/callbacks/{self.provider}/{self.account[-8:]}"

    def gateway(self, **options: Any) -> Gateway:
        spec = default_registry().get(self.provider)
        return spec.factory(spec.validate(self.credentials), ClientOptions(**options))

    def with_credentials(self, **changes: str) -> Case:
        return Case(
            self.provider,
            self.account,
            self.api_secret,
            self.webhook_secret,
            {**self.credentials, **changes},
        )


def make_case(provider: str, sandbox_url: str) -> Case:
    suffix = uuid.uuid4().hex[:12]
    if provider == "stripe":
        key = f"sk_test_{suffix}"
        return Case(
            provider,
            key,
            None,
            f"whsec_{suffix}",
            {
                "api_key": key,
                "webhook_secret": f"whsec_{suffix}",
                "api_base": f"{sandbox_url}/stripe",
            },
        )
    merchant, api_secret, webhook_secret = f"m_{suffix}", f"api-{suffix}", f"hook-{suffix}"
    base = {"merchant_id": merchant, "api_secret": api_secret, "webhook_secret": webhook_secret}
    endpoint = (
        {"base_url": f"{sandbox_url}/jsonpay"}
        if provider == "json"
        else {"endpoint_url": f"{sandbox_url}/soapbank/v1/PaymentService"}
    )
    return Case(provider, merchant, api_secret, webhook_secret, {**base, **endpoint})


def payment(scenario: str | None = None, **overrides: Any) -> PaymentRequest:
    """A fresh attempt (new transaction id, so a new idempotency key)."""
    fields: dict[str, Any] = {
        "account_id": "acc-1",
        "amount_minor": 1250,
        "currency": "EUR",
        "country": "DE",
        "payment_method": "pm_card_visa",
        "destination": {
            "holder_name": "Ada Lovelace",
            "iban": "DE89370400440532013000",
            "stripe_account": "acct_1Sandbox",
        },
        "metadata": {"sandbox_scenario": scenario} if scenario else {},
    }
    fields.update(overrides)
    return PaymentRequest.for_attempt(uuid.uuid4(), 1, **fields)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    settings = SandboxSettings(
        callback_delay_ms=20, settle_delay_ms=150, timeout_hold_ms=5000, callback_attempts=2
    )
    with serve_app(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    yield server
    server.close()


@pytest.fixture
def sandbox(sandbox_url: str, receiver: CallbackReceiver) -> Iterator[SandboxAdmin]:
    """The admin client on a sandbox reset for this test (which also releases held calls)."""
    with SandboxAdmin(sandbox_url) as admin:
        admin.reset(accounts=True)
        receiver.clear()
        yield admin
        admin.reset(accounts=True)


@pytest.fixture(params=PROVIDERS)
def case(request: pytest.FixtureRequest, sandbox: SandboxAdmin, receiver: CallbackReceiver) -> Case:
    made = make_case(request.param, sandbox.base_url)
    sandbox.register_account(
        made.provider,
        made.account,
        api_secret=made.api_secret,
        webhook_url=receiver.url + made.callback_path,
        webhook_secret=made.webhook_secret,
    )
    return made


@pytest.fixture
async def gateway(case: Case) -> AsyncIterator[Gateway]:
    gw = case.gateway(read_timeout_s=5.0, connect_timeout_s=2.0)
    yield gw
    await gw.aclose()
