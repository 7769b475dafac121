"""httpx's transport with aiohttp underneath instead of httpcore.

Why: per provider call, httpcore's pool and HTTP/1.1 machinery over anyio cost about four
times the CPU of aiohttp's (C parser, event-driven connection liveness instead of polling
every idle socket on every request): ~2.3 ms against ~0.55 ms per call on the 2-core dev
machine. The adapters, the Stripe SDK's httpx client and the OpenTelemetry httpx
instrumentation keep seeing httpx: `AiohttpTransport` *is* an `httpx.AsyncHTTPTransport`
(the instrumentation wraps that class's `handle_async_request`), only its `_pool` is
replaced, and every aiohttp failure is raised as the httpcore error httpx maps to the
httpx exception it would have raised, so `transport.classify_transport_error` (connect
failures: not executed; anything later: ambiguous) keeps its meaning.

No redirects are followed and bodies are handed over undecoded (httpx decodes them), as
with httpcore.

Kept-alive connections: a server closes one it has kept idle for its own timeout (5 s for
uvicorn and Apache), and a request written on it just then meets the close and gets no
answer. Such a failure says nothing about the provider's health, yet retried by the caller
it counted as one on the circuit breaker: after a quiet spell, a burst of concurrent calls
on stale connections opened the breaker, the callers' own retries were refused, and the
payments went to `unknown` for the reconciler (seen in the e2e tests). So:

- idle connections are dropped after `_KEEPALIVE_S`, shorter than those servers' timeout;
- a request that got no answer byte on a *reused* connection is resent at once on another
  connection, at most `_MAX_RESENDS` times, if it is replayable: an idempotent method
  (aiohttp resends those itself) or a request carrying an `Idempotency-Key` header, which
  every provider write of ours has (Go's net/http applies the same rule). The provider
  answers a resend with what it did under that key, as it does the caller's own retries.
  A failure on a new connection, a timeout, or anything after the answer began is raised;
  so is the first send's failure when a resend cannot connect (the first may have run).
  Each resend is logged (INFO) and reported to the transport's `on_resend` (a metric).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpcore
import httpx

log = logging.getLogger(__name__)

# httpx's default pool size; idle connections are kept less long than servers commonly keep
# them (5 s), so that the server never closes one just as we reuse it (see the docstring).
_MAX_CONNECTIONS = 100
_KEEPALIVE_S = 2.0
_CHUNK = 64 * 1024
# Resends of a replayable request whose reused connection turned out closed: a few stale
# idle connections may be taken one after another; a server that closes every reused
# connection gets the failure after these.
_MAX_RESENDS = 3
_IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# What a request that got no answer on a connection that was open raises: the server closed
# it (before any status line), or writing the request failed. Timeouts are not among them.
_UNANSWERED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
# Failing to connect (or to get a connection from the pool in time): nothing was sent.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _replayable(request: httpcore.Request) -> bool:
    return request.method in _IDEMPOTENT_METHODS or any(
        name.lower() == b"idempotency-key" for name, _ in request.headers
    )


class _Reuse:
    """Per request (aiohttp's `trace_request_ctx`): whether its connection was a kept-alive
    one taken from the pool."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(_session: Any, context: Any, _params: Any) -> None:
    reuse = context.trace_request_ctx
    if isinstance(reuse, _Reuse):
        reuse.reused = True


def _reuse_tracing() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(_on_reuse)
    return config


@contextmanager
def _as_httpcore_errors() -> Iterator[None]:
    """aiohttp's failures as the httpcore errors httpx turns into its own exceptions:
    failing to connect is `ConnectError`/`ConnectTimeout` (nothing was sent); anything
    later is a timeout, read or protocol error (the request may have been received)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpcore.ConnectTimeout(str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    except aiohttp.InvalidURL as exc:
        raise httpcore.UnsupportedProtocol(str(exc)) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpcore.ReadTimeout(str(exc) or type(exc).__name__) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpcore.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
        raise httpcore.RemoteProtocolError(str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpcore.ReadError(f"{type(exc).__name__}: {exc}") from exc


class _Body:
    """The response body as httpcore streams it; closing before the end drops the
    connection (a partly read HTTP/1.1 response cannot be reused)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpcore_errors():
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class _AiohttpPool:
    """What `httpx.AsyncHTTPTransport` calls its `_pool`: one aiohttp session, made on
    first use so that it belongs to the running event loop."""

    def __init__(self, verify: ssl.SSLContext | bool, on_resend: Callable[[], None] | None) -> None:
        self._ssl: ssl.SSLContext | bool = verify
        self._on_resend = on_resend
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=_MAX_CONNECTIONS, keepalive_timeout=_KEEPALIVE_S, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trace_configs=[_reuse_tracing()],
            )
        return self._session

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        url = bytes(request.url).decode("ascii")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ]
        stream: Any = request.stream
        body = b"".join([chunk async for chunk in stream])
        method = request.method.decode("ascii")
        resends = 0
        unanswered: Exception | None = None  # the first send's failure, once resent
        while True:
            reuse = _Reuse()
            with _as_httpcore_errors():
                try:
                    response = await self._session_now().request(
                        method,
                        url,
                        data=body or None,
                        headers=headers,
                        allow_redirects=False,
                        timeout=timeout,
                        trace_request_ctx=reuse,
                    )
                except Exception as exc:
                    if unanswered is not None and isinstance(exc, _NOT_CONNECTED):
                        # A resend that never connected proves nothing about the first
                        # send, which may have reached the provider: its failure (may have
                        # executed) stands, not this one (not executed).
                        raise unanswered from exc
                    if (
                        not isinstance(exc, _UNANSWERED)
                        or not reuse.reused
                        or isinstance(exc, TimeoutError)
                        or resends >= _MAX_RESENDS
                        or not _replayable(request)
                    ):
                        raise
                    unanswered = unanswered or exc
                    resends += 1
                    log.info(
                        "%s %s: the kept-alive connection was closed (%s); sent again on"
                        " another connection",
                        method,
                        request.url.target.decode("ascii", "replace").partition("?")[0],
                        type(exc).__name__,
                    )
                    if self._on_resend is not None:
                        self._on_resend()
                    continue
            break
        return httpcore.Response(
            status=response.status,
            headers=[
                (name, value)
                for name, value in response.raw_headers
                # aiohttp has already undone the chunking: httpx must not see it.
                if name.lower() != b"transfer-encoding"
            ],
            content=_Body(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b""},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> _AiohttpPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _CookiesWhenSet(httpx.Cookies):
    """httpx's cookie jar, minus its per-response cost when there is nothing to store.

    httpx hands every response to `http.cookiejar` (two urllib adapter objects and a
    header scan: ~3% of the gateway worker's CPU per payment), although payment APIs set
    no cookies. A response with a Set-Cookie header still goes through it unchanged."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def skip_cookieless_responses(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """`client`, its (empty) jar replaced by one that skips responses without cookies.
    httpx's `cookies` setter would copy into a plain `Cookies`, hence the attribute."""
    client._cookies = _CookiesWhenSet(client.cookies)
    return client


class AiohttpTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections are aiohttp's (see the module's docstring)."""

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        *,
        on_resend: Callable[[], None] | None = None,
    ) -> None:
        # Not super().__init__(): it would build an httpcore pool and an SSL context that
        # are never used. The parent's methods only use `_pool`.
        self._pool = _AiohttpPool(verify, on_resend)  # type: ignore[assignment]
