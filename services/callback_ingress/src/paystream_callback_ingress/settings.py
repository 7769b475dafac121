"""Settings of the callback ingress process."""

from __future__ import annotations

from pydantic import Field

from paystream_config import DatabaseSettings, KafkaSettings


class CallbackIngressSettings(KafkaSettings, DatabaseSettings):
    callback_host: str = "127.0.0.1"
    callback_port: int = Field(default=8001, ge=0, le=65535)
    # Provider callbacks are small; anything larger is refused (413) before it is read.
    callback_max_body_bytes: int = Field(default=262_144, ge=1024, le=786_432)
    # Kafka must acknowledge a callback within this, else 503 and the provider retries.
    # Also the producer's delivery timeout, so a 503'd callback is never delivered later.
    callback_publish_timeout_ms: int = Field(default=5000, ge=500, le=120_000)
    callback_retry_after_s: int = Field(default=5, ge=1, le=3600)
    # Signature timestamps further than this from our clock are refused (replays).
    callback_tolerance_s: int = Field(default=300, ge=10, le=3600)
    # How often the configuration version is read, so a changed connection (a rotated
    # webhook secret, a disabled connection) is seen within this many seconds.
    callback_config_poll_s: float = Field(default=1.0, gt=0, le=60)
