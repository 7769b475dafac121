"""A small synchronous client for the sandbox admin API (tests, `paystream dev` wiring)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx


class SandboxAdmin:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/_sandbox", timeout=timeout)

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _ok(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def register_account(
        self,
        provider: str,
        account: str,
        *,
        api_secret: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "provider": provider,
            "account": account,
            "api_secret": api_secret,
            "webhook_url": webhook_url,
            "webhook_secret": webhook_secret,
        }
        result: dict[str, Any] = self._ok(self._http.put("/accounts", json=body))
        return result

    def provision(self, provider: str, *, webhook_url: str | None = None) -> dict[str, str]:
        """Create a fresh sandbox account and return the credentials a paystream connection
        for `provider` needs (the adapters' field names), webhook target registered.

        For `paystream dev` and demos: choose the connection id first, so `webhook_url` can
        be the callback ingress URL of that connection.
        """
        token = secrets.token_hex(12)
        webhook_secret = f"whsec_{secrets.token_hex(16)}"
        if provider == "stripe":
            key = f"sk_test_{token}"
            self.register_account(
                provider, key, webhook_url=webhook_url, webhook_secret=webhook_secret
            )
            return {
                "api_key": key,
                "webhook_secret": webhook_secret,
                "api_base": f"{self.base_url}/stripe",
            }
        merchant, api_secret = f"merchant_{token}", secrets.token_hex(16)
        self.register_account(
            provider,
            merchant,
            api_secret=api_secret,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
        )
        creds = {
            "merchant_id": merchant,
            "api_secret": api_secret,
            "webhook_secret": webhook_secret,
        }
        if provider == "json":
            return {**creds, "base_url": f"{self.base_url}/jsonpay"}
        if provider == "soap":
            return {**creds, "endpoint_url": f"{self.base_url}/soapbank/v1/PaymentService"}
        raise ValueError(f"unknown provider {provider!r}")

    def set_faults(self, provider: str, **faults: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.put(f"/faults/{provider}", json=faults))
        return result

    def reset(self, *, accounts: bool = False) -> None:
        self._ok(self._http.post("/reset", json={"accounts": accounts}))

    def ledger(self, **filters: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._ok(self._http.get("/ledger", params=filters))["data"]
        return rows

    def calls(self) -> dict[str, int]:
        """Write calls each provider received, refused ones included."""
        counts: dict[str, int] = self._ok(self._http.get("/calls"))
        return counts

    def callbacks(self, **filters: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._ok(self._http.get("/callbacks", params=filters))["data"]
        return rows

    def complete_action(self, provider: str, payment_id: str, *, succeed: bool = True) -> None:
        result = "succeeded" if succeed else "failed"
        response = self._http.get(f"/redirect/{provider}/{payment_id}", params={"result": result})
        response.raise_for_status()

    def settle(self, provider: str, payment_id: str, *, succeed: bool = True) -> dict[str, Any]:
        body = {"result": "succeeded" if succeed else "failed"}
        result: dict[str, Any] = self._ok(
            self._http.post(f"/settle/{provider}/{payment_id}", json=body)
        )
        return result

    def reverse_transfer(self, transfer_id: str) -> dict[str, Any]:
        """Reverse a Stripe transfer: the sandbox then sends `transfer.reversed`."""
        result: dict[str, Any] = self._ok(self._http.post(f"/reverse/stripe/{transfer_id}"))
        return result
