"""Broker gone -> 503 + Retry-After, and the refused command never appears later."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from paystream_devinfra import EmbeddedKafka, free_port
from paystream_ingest_api.app import create_app
from paystream_ingest_api.settings import IngestSettings
from paystream_messaging.topics import ensure_topics
from tests.integration.ingest.conftest import build_deps, make_tenant
from tests.support.asgi_server import serve
from tests.support.databases import libpq
from tests.support.kafka import consume_until, end_offsets
from tests.support.polling import wait_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

DEPOSIT = {"account_id": "user-7", "country": "DE", "amount": "10.00", "currency": "EUR"}


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedKafka, TcpProxy]]:
    """A broker only reachable through a proxy the test can cut (it advertises the proxy)."""
    port = free_port()
    proxy = TcpProxy(port)
    with EmbeddedKafka(port=port, advertised_port=proxy.port) as kafka:
        yield kafka, proxy
    proxy.close()


def test_unreachable_broker_gives_503_and_nothing_later(
    proxied_broker: tuple[EmbeddedKafka, TcpProxy], primary_database_url: str
) -> None:
    _kafka, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    settings = IngestSettings(
        kafka_bootstrap=bootstrap,
        database_url=primary_database_url,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}",
        ingest_publish_timeout_ms=2000,
        ingest_retry_after_s=7,
    )
    ensure_topics(settings)
    with psycopg.connect(libpq(primary_database_url)) as conn:
        tenant = make_tenant(conn, "outage")
    deps = build_deps(settings)
    headers = tenant.auth
    with serve(create_app(deps)) as url, httpx.Client(base_url=url, timeout=30) as client:
        ok = client.post(
            "/v1/deposits", json=DEPOSIT, headers={**headers, "Idempotency-Key": "before"}
        )
        assert ok.status_code == 202, ok.text

        proxy.down()
        refused = client.post(
            "/v1/deposits", json=DEPOSIT, headers={**headers, "Idempotency-Key": "during"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "7"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/broker-unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["kafka"] is False

        proxy.up()

        # A client retries a 503 with the same key until it is accepted.
        def accepted_after() -> bool:
            retry = client.post(
                "/v1/deposits", json=DEPOSIT, headers={**headers, "Idempotency-Key": "after"}
            )
            return retry.status_code == 202

        wait_for(
            accepted_after, timeout=60, interval=0.5, what="acceptance once the broker is back"
        )
    deps.publisher.close(5)

    # Same account -> same partition, in order: once "after" is there, "during" would be too.
    records = consume_until(
        bootstrap,
        settings.topic("commands"),
        lambda rs: any(json.loads(r.value or b"{}")["idempotency_key"] == "after" for r in rs),
    )
    keys = [json.loads(r.value or b"{}")["idempotency_key"] for r in records]
    assert "during" not in keys
    assert keys.count("before") == 1
    assert "after" in keys
    assert end_offsets(bootstrap, settings.topic("commands"), 6) == len(records)
