"""Settings fail at start with one line per bad variable."""

from __future__ import annotations

import pytest

from paystream_config import KafkaSettings, SettingsError, load


def test_every_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_KAFKA_BOOTSTRAP", "no-port-here")
    monkeypatch.setenv("PAYSTREAM_TOPIC_PARTITIONS", "0")
    with pytest.raises(SettingsError) as caught:
        load(KafkaSettings)
    message = str(caught.value)
    assert "PAYSTREAM_KAFKA_BOOTSTRAP: Value error, expected host:port" in message
    assert "PAYSTREAM_TOPIC_PARTITIONS" in message


def test_valid_settings_and_topic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_KAFKA_BOOTSTRAP", "a:9092,b:9093")
    monkeypatch.setenv("PAYSTREAM_TOPIC_PREFIX", "acme")
    settings = load(KafkaSettings)
    assert settings.topic("commands") == "acme.commands"


def test_consumer_settings_never_skip_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from paystream_messaging.kafka_config import consumer_config, producer_config

    settings = KafkaSettings(kafka_bootstrap="h:1")
    consumer = consumer_config(settings, "g", "c")
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    producer = producer_config(settings, "p")
    assert producer["acks"] == "all"
    assert producer["enable.idempotence"] is True


def test_consumer_groups_keep_their_names() -> None:
    """A consumer group's name is where its committed offsets live: renaming it by accident
    makes a deployed worker start over from the earliest record (a package rename once did).
    The names are also what the autoscaler watches in deploy/k8s."""
    from pathlib import Path

    from paystream_gateway_worker.settings import GatewayWorkerSettings
    from paystream_provider_reports.settings import CallbackWorkerSettings

    gateway = GatewayWorkerSettings.model_fields["worker_group"].default
    callback = CallbackWorkerSettings.model_fields["callback_worker_group"].default
    assert (gateway, callback) == ("paystream-gateway-worker", "paystream-callback-worker")
    base = Path(__file__).parents[2] / "deploy" / "k8s" / "base"
    assert f"consumerGroup: {gateway}" in (base / "gateway-worker.yaml").read_text()
    assert f"consumerGroup: {callback}" in (base / "callback-worker.yaml").read_text()


def test_the_hot_pool_reconnects_within_seconds_of_an_outage() -> None:
    """psycopg_pool's reconnection delay doubles until reconnect_timeout: bounded, so a
    connection attempt is never a minute away once PostgreSQL is back."""
    from paystream_config import DatabaseSettings
    from paystream_storage.pool import RECONNECT_TIMEOUT_S, HotPool

    pool = HotPool(DatabaseSettings(database_url="postgresql://x@127.0.0.1:1/x"))
    assert pool._pool.reconnect_timeout == RECONNECT_TIMEOUT_S <= 15
