"""Typed PAYSTREAM_ settings shared by every service."""

from paystream_config.settings import (
    DatabaseSettings,
    KafkaSettings,
    RelaySettings,
    SettingsError,
    load,
)

__all__ = ["DatabaseSettings", "KafkaSettings", "RelaySettings", "SettingsError", "load"]
