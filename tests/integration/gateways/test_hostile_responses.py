"""A provider (or something in between) answering garbage: after the request was sent,
an unreadable answer is ambiguous, never a success or a safe fallback."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from paystream_gateways import Ambiguous, AmbiguousReason, ClientOptions, Credentials
from paystream_gateways.json_gateway import JsonGateway
from paystream_gateways.soap_gateway import SoapGateway
from tests.integration.gateways.conftest import payment
from tests.unit.gateways.test_xml_safety import BILLION_LAUGHS

pytestmark = pytest.mark.integration


@contextmanager
def _server(status: int, body: bytes, content_type: str) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _soap(url: str) -> SoapGateway:
    creds = {"endpoint_url": url, "merchant_id": "m", "api_secret": "a", "webhook_secret": "w"}
    return SoapGateway(Credentials(creds), ClientOptions())


def _json(url: str, max_response_bytes: int | None = None) -> JsonGateway:
    creds = {"base_url": url, "merchant_id": "m", "api_secret": "a", "webhook_secret": "w"}
    options = ClientOptions()
    if max_response_bytes is not None:
        options = dataclasses.replace(options, max_response_bytes=max_response_bytes)
    return JsonGateway(Credentials(creds), options)


async def test_soap_answer_with_entity_bomb_is_ambiguous(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/">]>'
        "<r>&x;</r>"
    ).encode()
    for body in (BILLION_LAUGHS, xxe):
        with _server(200, body, "text/xml") as url:
            gateway = _soap(url)
            try:
                with pytest.raises(Ambiguous) as caught:
                    await gateway.deposit(payment())
            finally:
                await gateway.aclose()
            assert caught.value.reason == AmbiguousReason.BAD_RESPONSE
    with pytest.raises(BlockingIOError):
        listener.accept()  # the external entity was never fetched


async def test_soap_5xx_without_a_fault_is_ambiguous() -> None:
    with _server(502, b"<html>Bad Gateway</html>", "text/html") as url:
        gateway = _soap(url)
        try:
            with pytest.raises(Ambiguous) as caught:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert caught.value.reason == AmbiguousReason.SERVER_ERROR


async def test_json_answers_not_json_or_too_large_are_ambiguous() -> None:
    with _server(201, b"<html>not json</html>", "text/html") as url:
        gateway = _json(url)
        try:
            with pytest.raises(Ambiguous) as not_json:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    with _server(201, b'{"pad": "' + b"x" * 5000 + b'"}', "application/json") as url:
        gateway = _json(url, max_response_bytes=1000)
        try:
            with pytest.raises(Ambiguous) as too_large:
                await gateway.deposit(payment())
        finally:
            await gateway.aclose()
    assert not_json.value.reason == AmbiguousReason.BAD_RESPONSE
    assert too_large.value.reason == AmbiguousReason.BAD_RESPONSE
