"""Settings of the ingest API process."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from paystream_config import DatabaseSettings, KafkaSettings


class IngestSettings(KafkaSettings, DatabaseSettings):
    ingest_host: str = "127.0.0.1"
    ingest_port: int = Field(default=8000, ge=0, le=65535)
    # Measured with `paystream bench ingest`; see the README.
    ingest_server: Literal["uvicorn", "granian"] = "uvicorn"
    ingest_workers: int = Field(default=1, ge=1, le=64)
    # Bodies above this get 413 before they are parsed. The default takes every body the
    # OpenAPI document admits written as compact JSON, even with all 32 metadata values at
    # 512 characters escaped as \\uXXXX surrogate pairs (about 205 KB).
    ingest_max_body_bytes: int = Field(default=262_144, ge=1024, le=10_485_760)
    # A command is acknowledged by Kafka within this bound or the client gets 503; the
    # producer's delivery timeout is set to it, so a 503'd record is never sent later.
    ingest_publish_timeout_ms: int = Field(default=5000, ge=500, le=120_000)
    ingest_retry_after_s: int = Field(default=5, ge=1, le=3600)
    # API key -> tenant lookups are cached this long; it bounds how late a revocation bites.
    ingest_auth_cache_s: float = Field(default=10.0, ge=0, le=300)
