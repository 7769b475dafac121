"""The gateway-health topic on the real broker: views in one process agree through it, two
concurrent lease claims are granted once in both, a new view reads it to the end before it
is ready, and the operator commands read and write it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from paystream_cli.commands import gateways as gateways_command
from paystream_cli.main import cli
from paystream_config import KafkaSettings
from paystream_messaging import topics
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.gateway_health import decode
from paystream_messaging.gateway_health_topic import HealthTopic, TopicLayoutError, read_view
from paystream_messaging.kafka_config import producer_config
from paystream_messaging.topics import ensure_topics
from tests.support.asgi_server import free_port
from tests.support.routing import seed_demo_routing

pytestmark = pytest.mark.integration

GW = "jsonpay"


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    settings = KafkaSettings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=f"health-{uuid.uuid4().hex[:8]}"
    )
    ensure_topics(settings)
    return settings


@asynccontextmanager
async def view(kafka: KafkaSettings, name: str) -> AsyncIterator[HealthTopic]:
    publisher = AsyncPublisher(producer_config(kafka, name))
    health = HealthTopic(kafka, publisher, worker_id=name, fetch_wait_ms=250)
    try:
        assert await health.start(catch_up_s=30), "caught up"
        yield health
    finally:
        health.close()
        publisher.close()


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_the_topic_has_one_compacted_partition(kafka: KafkaSettings) -> None:
    name = kafka.topic(topics.GATEWAY_HEALTH)
    admin = AdminClient({"bootstrap.servers": kafka.kafka_bootstrap})
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 1
    [config] = admin.describe_configs([ConfigResource("topic", name)]).values()
    assert config.result(10)["cleanup.policy"].value == "compact"


async def test_an_open_published_by_one_view_is_seen_by_the_other(kafka: KafkaSettings) -> None:
    async with view(kafka, "w1") as one, view(kafka, "w2") as two:
        now = time.time()
        one.live.opened(GW, failures=5, opened_at=now, open_until=now + 10, reason="test")
        assert one.live.view[GW].state == "open", "in its own view at once"
        await eventually(lambda: GW in two.live.view, "the open in w2")
        print(f"\nan open reached the other view in {time.time() - now:.2f} s (fetch wait 250 ms)")
        assert two.live.view[GW].state == "open"
        assert two.live.view[GW] == one.live.view[GW]


async def test_two_concurrent_claims_grant_exactly_one_in_both_views(kafka: KafkaSettings) -> None:
    async with view(kafka, "w1") as one, view(kafka, "w2") as two:
        past = time.time() - 20
        one.live.opened(GW, failures=5, opened_at=past, open_until=past + 10, reason="test")
        await eventually(lambda: two.live.entry(GW) is not None, "the open in w2")
        until = time.time() + 20
        granted = await asyncio.gather(
            one.live.claim(GW, until=until, timeout_s=5),
            two.live.claim(GW, until=until + 0.5, timeout_s=5),
        )
        assert sorted(granted) == ["denied", "granted"]
        winner = "w1" if granted[0] == "granted" else "w2"
        await eventually(lambda: one.live.entry(GW) == two.live.entry(GW), "views agreeing")
        entry = one.live.view[GW]
        assert entry.state == "half_open"
        assert entry.lease is not None
        assert entry.lease.holder == winner


async def test_a_new_view_reads_everything_before_it_is_ready(kafka: KafkaSettings) -> None:
    async with view(kafka, "w1") as one:
        # a burst, batched by the producer: tansu's reported end can be short of it
        for n in range(1, 40):
            one.live.failed(f"gw{n % 7}", failures=n, reason="burst")
        now = time.time()
        one.live.opened(GW, failures=5, opened_at=now, open_until=now + 60, reason="last")
        await eventually(lambda: one.live.applied == 40, "w1 reading its own records back")
        async with view(kafka, "late") as late:
            # ready means caught up: nothing more to wait for
            assert late.live.applied == 40
            assert late.live.view == one.live.view


def test_operator_commands_show_in_the_view(kafka: KafkaSettings, database_url: str) -> None:
    asyncio.run(seed_demo_routing(database_url))
    env = {
        "PAYSTREAM_DATABASE_URL": database_url,
        "PAYSTREAM_KAFKA_BOOTSTRAP": kafka.kafka_bootstrap,
        "PAYSTREAM_TOPIC_PREFIX": kafka.topic_prefix,
    }
    runner = CliRunner()
    assert json.loads(runner.invoke(cli, ["gateways", "health", "--json"], env=env).output) == {}
    down = runner.invoke(cli, ["gateways", "down", "stripe"], env=env)
    assert down.exit_code == 0, down.output
    assert "stripe is down in the gateway health view" in down.output
    shown = json.loads(runner.invoke(cli, ["gateways", "health", "--json"], env=env).output)
    assert (shown["stripe"]["operator"], shown["stripe"]["state"]) == ("down", "closed")
    assert decode(json.dumps(shown["stripe"]).encode()).by.startswith("cli:")
    up = runner.invoke(cli, ["gateways", "up", "stripe"], env=env)
    assert up.exit_code == 0, up.output
    assert read_view(kafka)["stripe"].operator == "up"
    table = runner.invoke(cli, ["gateways", "health"], env=env)
    assert table.exit_code == 0
    assert "paystream gateways up" in table.output
    missing = runner.invoke(cli, ["gateways", "down", "nope"], env=env)
    assert missing.exit_code == 2


def test_a_health_topic_with_two_partitions_is_refused(kafka_bootstrap: str) -> None:
    """Views read partition 0 only: on a topic with more they would miss records (and a
    breaker opened there would never close in them), so nothing starts on it."""
    settings = KafkaSettings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=f"health2-{uuid.uuid4().hex[:8]}"
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = settings.topic(topics.GATEWAY_HEALTH)
    for future in admin.create_topics([NewTopic(name, num_partitions=2)]).values():
        future.result(10)
    with pytest.raises(TopicLayoutError, match="2 partitions"):
        read_view(settings, timeout_s=10)

    async def start() -> None:
        publisher = AsyncPublisher(producer_config(settings, "w1"))
        health = HealthTopic(settings, publisher, worker_id="w1", fetch_wait_ms=250)
        try:
            await health.start(catch_up_s=10)
        finally:
            health.close()
            publisher.close()

    with pytest.raises(TopicLayoutError):
        asyncio.run(start())


def test_the_operator_commands_give_up_on_a_broker_that_is_away(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on the port: the commands end (exit 1) instead of waiting forever,
    and `health` without a broker configured is a settings error."""
    monkeypatch.setattr(gateways_command, "HEALTH_TIMEOUT_S", 2.0)
    asyncio.run(seed_demo_routing(database_url))
    away = {
        "PAYSTREAM_DATABASE_URL": database_url,
        "PAYSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    runner = CliRunner()
    health = runner.invoke(cli, ["gateways", "health"], env=away)
    assert health.exit_code == 1, health.output
    down = runner.invoke(cli, ["gateways", "down", "stripe"], env=away)
    assert down.exit_code == 1, down.output
    assert "stripe is down: every worker routes accordingly" in down.output
    assert "not updated" in down.output
    unset = runner.invoke(cli, ["gateways", "health"], env={"PAYSTREAM_KAFKA_BOOTSTRAP": ""})
    assert unset.exit_code == 2
    assert "PAYSTREAM_KAFKA_BOOTSTRAP is not set" in unset.output
