"""The adapters' HTTP transport (httpx over aiohttp's connections, `aiohttp_pool`) on the
wire: what a provider sends back in ways the sandbox does not (chunked and compressed
answers, redirects, a connection dropped after the request arrived, a kept-alive
connection closed just as a request is written on it), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from paystream_gateways import (
    Ambiguous,
    AmbiguousReason,
    ClientOptions,
    Credentials,
    NotExecuted,
    Succeeded,
)
from paystream_gateways.aiohttp_pool import _MAX_RESENDS, AiohttpTransport
from paystream_gateways.json_gateway import JsonGateway
from tests.integration.gateways.conftest import PROVIDERS, make_case, payment

pytestmark = pytest.mark.integration

_PAYMENT = {"id": "pay_1", "object": "payment", "status": "succeeded"}


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def _listening(
    on_connection: Callable[[socket.socket, int], None], *, concurrent: bool
) -> Iterator[tuple[str, Callable[[], None]]]:
    """Accepts connections until the block ends, or until the `refuse` it yields with its
    URL is called (new connections are then refused); `on_connection(conn, index)` serves
    each, in the accepting thread (one at a time) or, `concurrent`, in a thread of its own."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        for index in itertools.count():
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                    break
                except TimeoutError:
                    continue
                except OSError:  # refused: the socket is closed
                    return
            else:
                return
            if not concurrent:
                on_connection(conn, index)
                continue
            conn.settimeout(5)
            thread = threading.Thread(target=on_connection, args=(conn, index), daemon=True)
            threads.append(thread)
            thread.start()

    def refuse() -> None:
        # Shut down first: a bare close waits for the accepting thread's accept() to return,
        # and a connection that arrives meanwhile is taken in and then reset.
        server.shutdown(socket.SHUT_RDWR)
        server.close()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield url, refuse
    finally:
        stop.set()
        acceptor.join(5)
        server.close()
        for thread in threads:
            thread.join(5)


@contextmanager
def _raw_server(
    answer: Callable[[socket.socket, bytes], None],
) -> Iterator[tuple[str, list[bytes]]]:
    """A one-connection-at-a-time HTTP server: `answer` writes whatever bytes it likes."""
    received: list[bytes] = []

    def serve(conn: socket.socket, _: int) -> None:
        with conn:
            request = _read_request(conn)
            received.append(request)
            answer(conn, request)

    with _listening(serve, concurrent=False) as (url, _):
        yield url, received


@dataclass(frozen=True)
class Seen:
    connection: int  # in the order the server accepted them
    number: int  # of the request on its connection, from 0
    request: bytes

    @property
    def idempotency_key(self) -> bytes | None:
        for line in self.request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"idempotency-key":
                return value.strip()
        return None

    @property
    def body(self) -> bytes:
        return self.request.partition(b"\r\n\r\n")[2]


_ANSWER = json.dumps(_PAYMENT).encode()


@contextmanager
def _keepalive_server(
    drop: Callable[[int, int], bool], *, first_together: int = 1, refuse_after_drop: bool = False
) -> Iterator[tuple[str, list[Seen]]]:
    """An HTTP/1.1 server that keeps its connections open, one thread each. Request `n` on
    connection `c` is answered (200, a payment) unless `drop(c, n)`: then the connection is
    closed unanswered, as a server does when its idle timeout ends just as the request
    arrives. The first requests of the first `first_together` connections are answered
    only once all of them arrived (so that the client holds that many connections).
    `refuse_after_drop`: once a request is dropped, new connections are refused."""
    seen: list[Seen] = []
    refusing: list[Callable[[], None]] = []  # the listener's `refuse`, once it listens
    together = threading.Barrier(first_together)

    def serve(conn: socket.socket, c: int) -> None:
        with conn:
            for n in itertools.count():
                request = _read_request(conn)
                if not request:
                    return
                seen.append(Seen(c, n, request))
                if drop(c, n):
                    if refuse_after_drop:
                        refusing[0]()
                    return
                if n == 0 and c < first_together:
                    together.wait(10)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(_ANSWER)}\r\n\r\n".encode()
                    + _ANSWER
                )

    with _listening(serve, concurrent=True) as (url, refuse):
        refusing.append(refuse)
        yield url, seen


def _json(url: str, resent: list[str] | None = None) -> JsonGateway:
    creds = {"base_url": url, "merchant_id": "m", "api_secret": "a", "webhook_secret": "w"}
    report = resent.append if resent is not None else None
    return JsonGateway(Credentials(creds), ClientOptions(read_timeout_s=5, on_resend=report))


async def test_a_chunked_gzipped_answer_is_read() -> None:
    body = gzip.compress(json.dumps(_PAYMENT).encode())

    def answer(conn: socket.socket, _: bytes) -> None:
        half = len(body) // 2
        chunks = b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
        )
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )

    with _raw_server(answer) as (url, received):
        gateway = _json(url)
        try:
            outcome = await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert outcome == Succeeded("pay_1")
    # Our headers arrive once each (httpx sets them; the connection layer adds none twice).
    names = [
        line.split(b":")[0].lower() for line in received[0].split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    ]
    assert len(names) == len(set(names)), names
    assert b"idempotency-key" in names
    assert b"jsonpay-signature" in names


async def test_a_connection_dropped_after_the_request_is_ambiguous() -> None:
    with _raw_server(lambda conn, _: None) as (url, received):
        gateway = _json(url)
        try:
            with pytest.raises(Ambiguous) as caught:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    # Sent once: a new connection that fails is the caller's to retry (or not).
    assert len(received) == 1, "the request reached the server once"
    assert caught.value.reason == AmbiguousReason.CONNECTION_LOST


async def test_a_write_on_a_kept_alive_connection_the_server_closed_is_sent_again() -> None:
    # The second request reuses the first one's connection, which the server closes unanswered.
    resent: list[str] = []
    with _keepalive_server(lambda c, n: (c, n) == (0, 1)) as (url, seen):
        gateway = _json(url, resent)
        try:
            first = await gateway.deposit(payment())
            second = await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert (first, second) == (Succeeded("pay_1"), Succeeded("pay_1"))
    assert resent == ["json"], "the resend is reported, with the provider's name"
    assert [(s.connection, s.number) for s in seen] == [(0, 0), (0, 1), (1, 0)]
    dropped, again = seen[1], seen[2]
    # The same request, under the same key: the provider answers it with what it did.
    assert dropped.idempotency_key is not None
    assert again.idempotency_key == dropped.idempotency_key != seen[0].idempotency_key
    assert again.body == dropped.body


async def test_a_resend_that_cannot_connect_leaves_the_first_send_ambiguous() -> None:
    # The dropped request may have run: a resend refused at connect proves nothing of it.
    resent: list[str] = []
    with _keepalive_server(lambda c, n: (c, n) == (0, 1), refuse_after_drop=True) as (url, seen):
        gateway = _json(url, resent)
        try:
            assert await gateway.deposit(payment()) == Succeeded("pay_1")
            with pytest.raises(Ambiguous) as caught:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert caught.value.reason == AmbiguousReason.CONNECTION_LOST
    assert [(s.connection, s.number) for s in seen] == [(0, 0), (0, 1)]
    assert resent == ["json"], "the resend was tried"


async def test_resends_stop_after_a_few_stale_connections() -> None:
    connections = _MAX_RESENDS + 2
    # Every connection's first request is answered (all at once: the client then holds
    # `connections` idle ones); every request on a reused one is dropped.
    resent: list[str] = []
    with _keepalive_server(lambda c, n: n > 0, first_together=connections) as (url, seen):
        gateway = _json(url, resent)
        try:
            opened = await asyncio.gather(*(gateway.deposit(payment()) for _ in range(connections)))
            with pytest.raises(Ambiguous) as caught:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert opened == [Succeeded("pay_1")] * connections
    assert caught.value.reason == AmbiguousReason.CONNECTION_LOST
    last = [s for s in seen if s.number > 0]
    assert len(last) == 1 + _MAX_RESENDS, "sent, then resent _MAX_RESENDS times"
    assert len({s.connection for s in last}) == len(last), "each time on another connection"
    assert len({s.idempotency_key for s in last}) == 1
    assert resent == ["json"] * _MAX_RESENDS


async def test_a_request_without_an_idempotency_key_is_not_sent_again() -> None:
    resends: list[None] = []
    transport = AiohttpTransport(on_resend=lambda: resends.append(None))
    with _keepalive_server(lambda c, n: (c, n) == (0, 1)) as (url, seen):
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(f"{url}/v1/notes", content=b"a")).status_code == 200
            with pytest.raises(httpx.TransportError):
                await client.post(f"{url}/v1/notes", content=b"b")
    assert [(s.connection, s.number) for s in seen] == [(0, 0), (0, 1)]
    assert resends == []


async def test_a_redirect_is_not_followed() -> None:
    with _raw_server(lambda conn, _: None) as (elsewhere, followed):

        def redirect(conn: socket.socket, _: bytes) -> None:
            conn.sendall(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/v1/payments\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )

        with _raw_server(redirect) as (url, _):
            gateway = _json(url)
            try:
                with pytest.raises(NotExecuted):
                    await gateway.deposit(payment())
            finally:
                await gateway.aclose()
    assert followed == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_adapters_write_is_sent_again_on_a_fresh_connection(provider: str) -> None:
    """Each adapter's provider writes carry their key as HTTP `Idempotency-Key` (SOAP's
    is in its envelope too), so the transport may resend them. The server here answers
    every adapter in JSON: what they make of that does not matter, only what was sent."""
    resent: list[str] = []
    with _keepalive_server(lambda c, n: (c, n) == (0, 1)) as (url, seen):
        gateway = make_case(provider, url).gateway(read_timeout_s=5.0, on_resend=resent.append)
        try:
            for _ in range(2):
                with contextlib.suppress(Ambiguous, NotExecuted):
                    await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert [(s.connection, s.number) for s in seen] == [(0, 0), (0, 1), (1, 0)]
    key = seen[1].idempotency_key
    assert key is not None
    assert re.fullmatch(rb"ps-[0-9a-f-]{36}-1", key), key
    assert seen[2].idempotency_key == key
    assert seen[2].body == seen[1].body
    assert resent == [provider]
