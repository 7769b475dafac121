"""The adapters' clients skip httpx's cookie jar for answers that set no cookie (a cost
paid on every provider answer), and still keep the cookies an answer does set."""

from __future__ import annotations

import httpx
import pytest

from paystream_gateways.aiohttp_pool import skip_cookieless_responses


def _client(headers: dict[str, str]) -> httpx.AsyncClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers=headers))
    return skip_cookieless_responses(
        httpx.AsyncClient(transport=transport, base_url="http://provider.test")
    )


async def test_an_answer_without_set_cookie_never_reaches_the_jar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[httpx.Response] = []
    monkeypatch.setattr(httpx.Cookies, "extract_cookies", lambda self, r: seen.append(r))
    async with _client({"Content-Type": "application/json"}) as client:
        await client.get("/v1/payments/pay_1")
    assert seen == []


async def test_an_answer_with_set_cookie_is_stored_as_httpx_would() -> None:
    async with _client({"Set-Cookie": "session=abc; Path=/"}) as client:
        await client.get("/v1/payments/pay_1")
        assert client.cookies.get("session") == "abc"
        assert isinstance(client.cookies, httpx.Cookies)
