"""Sandbox settings (`PAYSTREAM_SANDBOX_*`). Per-provider fault controls live in the admin
API; these are the process-wide defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYSTREAM_SANDBOX_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=0, le=65535)
    # Delay between a state change and its callback leaving the sandbox.
    callback_delay_ms: int = Field(default=100, ge=0, le=600_000)
    # How long a `pending` payment stays pending before it settles on its own.
    settle_delay_ms: int = Field(default=300, ge=0, le=3_600_000)
    # How long the `timeout` fault holds the answer after executing (clients give up first).
    timeout_hold_ms: int = Field(default=30_000, ge=0, le=600_000)
    callback_attempts: int = Field(default=3, ge=1, le=20)
    callback_timeout_s: float = Field(default=5.0, gt=0, le=120)
    signature_tolerance_s: int = Field(default=300, ge=1)
    # Seed for error_rate draws: a fixed seed makes a fault run reproducible.
    seed: int | None = None
