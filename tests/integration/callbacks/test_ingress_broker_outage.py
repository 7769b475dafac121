"""Kafka gone: the ingress answers 503 so the provider retries, and publishes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from paystream_callback_ingress import main as ingress_main
from paystream_callback_ingress.app import create_app as create_ingress
from paystream_callback_ingress.settings import CallbackIngressSettings
from paystream_devinfra import EmbeddedKafka, free_port
from paystream_messaging.topics import ensure_topics
from tests.integration.callbacks.conftest import Stack
from tests.support.asgi_server import serve
from tests.support.kafka import consume_until, end_offsets
from tests.support.polling import wait_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied_broker() -> Iterator[TcpProxy]:
    port = free_port()
    proxy = TcpProxy(port)
    with EmbeddedKafka(port=port, advertised_port=proxy.port):
        yield proxy
    proxy.close()


def test_broker_down_gives_503_and_the_retry_is_published_once(
    stack: Stack, proxied_broker: TcpProxy
) -> None:
    proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    settings = CallbackIngressSettings(
        kafka_bootstrap=bootstrap,
        database_url=stack.database_url,
        topic_prefix=f"cbo{uuid.uuid4().hex[:8]}",
        callback_publish_timeout_ms=2000,
        callback_retry_after_s=9,
    )
    ensure_topics(settings)
    conn = stack.connect(stack.new_tenant(), "json")
    txn = stack.seed_pending(conn)
    cb = stack.callback(
        conn, payment_id=txn.provider_reference, reference=txn.reference, status="succeeded"
    )
    deps = ingress_main.build_deps(settings, stack.ring)
    with serve(create_ingress(deps)) as url, httpx.Client(base_url=url, timeout=30) as client:
        proxy.down()
        refused = client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "9"
        assert refused.json()["type"].endswith("/broker-unavailable")
        proxy.up()

        def accepted() -> bool:  # the provider retries the same delivery
            retry = client.post(conn.path, content=cb.body, headers=cb.headers(conn.secret))
            return retry.status_code == 200

        wait_for(accepted, timeout=60, interval=0.5, what="acceptance once Kafka is back")
    records = consume_until(bootstrap, settings.topic("callbacks"), lambda rs: len(rs) >= 1)
    bodies = [json.loads(r.value or b"{}")["body"] for r in records]
    assert bodies == [cb.body.decode()], "the refused delivery must not appear as well"
    assert end_offsets(bootstrap, settings.topic("callbacks"), settings.topic_partitions) == 1
    verdicts = dict(
        stack.query(
            "SELECT verdict, count(*) FROM callback_log WHERE connection_id = %s GROUP BY 1",
            conn.id,
        )
    )
    assert verdicts.get("accepted") == 1
