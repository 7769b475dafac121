"""Hostile XML is refused fast, and nothing is read from disk or network while refusing."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paystream_gateways import CallbackRejected, ClientOptions, Credentials
from paystream_gateways.soap_gateway import SoapGateway
from paystream_gateways.xml_safety import MalformedXml, UnsafeXml, XmlRejected, parse_xml

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<lolz>&lol9;</lolz>"
)


def _rejected_fast(data: bytes, error: type[XmlRejected] = UnsafeXml) -> XmlRejected:
    started = time.monotonic()
    with pytest.raises(error) as caught:
        parse_xml(data)
    assert time.monotonic() - started < 0.5
    return caught.value


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that would see any connection the parser attempted."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


def test_billion_laughs() -> None:
    _rejected_fast(BILLION_LAUGHS)


def test_quadratic_blowup_without_doctype_keyword_in_utf16() -> None:
    """UTF-16 hides `<!DOCTYPE` from the byte scan; the parser still refuses the DTD."""
    doc = BILLION_LAUGHS.replace(b'<?xml version="1.0"?>', b"").decode().encode("utf-16")
    assert b"<!DOCTYPE" not in doc
    _rejected_fast(doc)


def test_external_entity_to_a_local_file_is_never_opened(tmp_path: Path) -> None:
    # A FIFO: any attempt to read it blocks forever, so "returned quickly" proves it was
    # never opened. Its would-be content never shows up anywhere either.
    fifo = tmp_path / "canary"
    os.mkfifo(fifo)
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{fifo}">]><r>&x;</r>'
    ).encode()
    outcome: list[BaseException] = []

    def parse() -> None:
        try:
            parse_xml(doc)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=parse, daemon=True)
    worker.start()
    worker.join(2)

    assert not worker.is_alive(), "the parser tried to read the local file"
    assert isinstance(outcome[0], UnsafeXml)


def test_external_entity_to_the_network_connects_nowhere(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/x">]>'
        "<r>&x;</r>"
    ).encode()
    _rejected_fast(doc)
    _no_connection(listener)


def test_external_dtd_connects_nowhere(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    doc = f'<!DOCTYPE r SYSTEM "http://127.0.0.1:{port}/evil.dtd"><r/>'.encode()
    _rejected_fast(doc)
    _no_connection(listener)


def test_oversized_document_is_refused_before_parsing() -> None:
    huge = b"<r>" + b"<a>x</a>" * (2 * 1024 * 1024) + b"</r>"
    error = _rejected_fast(huge)
    assert "exceeds" in str(error)


def test_malformed_and_wellformed() -> None:
    _rejected_fast(b"<r><unclosed></r>", MalformedXml)
    assert parse_xml(b'<?xml version="1.0"?><r a="1"><b>t</b></r>').find("b") is not None


def test_soap_callback_with_hostile_xml_is_rejected() -> None:
    gateway = SoapGateway(
        Credentials(
            {
                "endpoint_url": "http://127.0.0.1:9/x",
                "merchant_id": "m",
                "api_secret": "a",
                "webhook_secret": "w",
            }
        ),
        ClientOptions(),
    )
    with pytest.raises(CallbackRejected) as caught:
        gateway.parse_callback(BILLION_LAUGHS)
    assert caught.value.reason == "malformed"
