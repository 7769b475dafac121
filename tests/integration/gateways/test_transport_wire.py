"""The adapters' HTTP transport (httpx over aiohttp's connections, `aiohttp_pool`) on the
wire: what a provider sends back in ways the sandbox does not (chunked and compressed
answers, redirects, a connection dropped after the request arrived), over real sockets."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from paystream_gateways import (
    Ambiguous,
    AmbiguousReason,
    ClientOptions,
    Credentials,
    NotExecuted,
    Succeeded,
)
from paystream_gateways.json_gateway import JsonGateway
from tests.integration.gateways.conftest import payment

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
def _raw_server(
    answer: Callable[[socket.socket, bytes], None],
) -> Iterator[tuple[str, list[bytes]]]:
    """A one-connection-at-a-time HTTP server: `answer` writes whatever bytes it likes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                request = _read_request(conn)
                received.append(request)
                answer(conn, request)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", received
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _json(url: str) -> JsonGateway:
    creds = {"base_url": url, "merchant_id": "m", "api_secret": "a", "webhook_secret": "w"}
    return JsonGateway(Credentials(creds), ClientOptions(read_timeout_s=5))


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
    assert received, "the request reached the server"
    assert caught.value.reason == AmbiguousReason.CONNECTION_LOST


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
