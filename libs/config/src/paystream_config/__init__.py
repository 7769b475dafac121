"""Typed PAYSTREAM_ settings shared by every service."""

from paystream_config.routing import RoutingSettings
from paystream_config.settings import (
    DatabaseSettings,
    KafkaSettings,
    RelaySettings,
    SettingsError,
    load,
)

__all__ = [
    "DatabaseSettings",
    "KafkaSettings",
    "RelaySettings",
    "RoutingSettings",
    "SettingsError",
    "load",
]
