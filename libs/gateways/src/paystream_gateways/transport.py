"""HTTP plumbing shared by the httpx-based adapters: timeouts, bounded reads, and the
classification of transport failures into NotExecuted / Ambiguous."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from paystream_gateways.aiohttp_pool import AiohttpTransport, skip_cookieless_responses
from paystream_gateways.errors import (
    Ambiguous,
    AmbiguousReason,
    GatewayError,
    NotExecuted,
    NotExecutedReason,
)
from paystream_gateways.protocol import ClientOptions

# Failures that happen before a single byte of the request can reach the provider.
_BEFORE_SENDING: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


def timeouts(options: ClientOptions) -> httpx.Timeout:
    return httpx.Timeout(options.read_timeout_s, connect=options.connect_timeout_s)


def resend_hook(options: ClientOptions, provider: str) -> Callable[[], None] | None:
    """What the transport calls on each resend (`aiohttp_pool`): `options.on_resend` with
    the provider's name."""
    report = options.on_resend
    if report is None:
        return None
    return lambda: report(provider)


def new_client(options: ClientOptions, provider: str, base_url: str = "") -> httpx.AsyncClient:
    # No redirects: a payment API that redirects a POST is misconfigured, and following it
    # could send the request (and its signature) somewhere else. A 3xx is classified as
    # not executed by the adapters: the endpoint that would process it never ran.
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=timeouts(options),
        follow_redirects=False,
        transport=AiohttpTransport(on_resend=resend_hook(options, provider)),
    )
    return skip_cookieless_responses(client)


def classify_transport_error(provider: str, exc: BaseException) -> GatewayError:
    """Map an exception raised while talking to the provider to our two classes.

    Anything not known to have failed before sending is ambiguous: a write timeout or a
    reset may come after the provider already received the whole request.
    """
    if isinstance(exc, _BEFORE_SENDING):
        return NotExecuted(
            provider, NotExecutedReason.CONNECT_FAILED, f"{type(exc).__name__}: {exc}"
        )
    if isinstance(exc, httpx.TimeoutException):
        return Ambiguous(provider, AmbiguousReason.TIMEOUT, f"{type(exc).__name__} after sending")
    return Ambiguous(provider, AmbiguousReason.CONNECTION_LOST, f"{type(exc).__name__}: {exc}")


async def send(
    client: httpx.AsyncClient, provider: str, request: httpx.Request, max_bytes: int
) -> tuple[httpx.Response, bytes]:
    """Send and read at most `max_bytes` of the answer; transport errors are classified."""
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise classify_transport_error(provider, exc) from exc
    try:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise Ambiguous(
                    provider,
                    AmbiguousReason.BAD_RESPONSE,
                    f"response larger than {max_bytes} bytes",
                    http_status=response.status_code,
                )
            chunks.append(chunk)
    except httpx.TransportError as exc:
        raise classify_transport_error(provider, exc) from exc
    finally:
        await response.aclose()
    return response, b"".join(chunks)
