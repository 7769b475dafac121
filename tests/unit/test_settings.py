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
