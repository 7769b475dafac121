"""Settings objects, one per concern, all read from `PAYSTREAM_*` environment variables.

Services compose the pieces they need and call `load()` at start, so a wrong value stops
the process with one line per problem instead of failing later inside a client library.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PREFIX = "PAYSTREAM_"


class SettingsError(Exception):
    """Raised by `load` with every invalid setting named, ready to print to an operator."""


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="ignore", frozen=True)


class KafkaSettings(_Base):
    """Broker address and the client timings that matter for correctness and latency."""

    kafka_bootstrap: str = Field(min_length=1, description="host:port[,host:port...]")
    topic_prefix: str = Field(default="paystream", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=7)
    # Short session/heartbeat make group joins take ~3 s on tansu instead of ~23 s; a long
    # max poll interval keeps a busy worker from being evicted (it then stalls for good).
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=500, ge=100)
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # tansu answers a fetch only when this expires: it bounds the latency of a sparse record.
    kafka_fetch_wait_max_ms: int = Field(default=10, ge=1, le=5000)
    # Workers lengthen it to this once no record came for `kafka_fetch_idle_after_s`, so an
    # idle stack does not spin; the first record after a quiet spell waits part of it once.
    kafka_fetch_wait_idle_ms: int = Field(default=500, ge=1, le=5000)
    kafka_fetch_idle_after_s: float = Field(default=2.0, ge=0, le=3600)
    kafka_delivery_timeout_ms: int = Field(default=30_000, ge=1000)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _hosts_have_ports(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port, got {part!r}")
        return value

    def topic(self, name: str) -> str:
        """Full topic name for a logical one (`commands` -> `paystream.commands`)."""
        return f"{self.topic_prefix}.{name}"


class DatabaseSettings(_Base):
    """PostgreSQL connection; the URL's user owns the tables and runs migrations."""

    database_url: str = Field(min_length=1)
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # How long a request waits for a pooled connection: while PostgreSQL is down the pool
    # has none to give, and an HTTP client should get its 503 in seconds, not half a minute.
    database_pool_timeout_s: float = Field(default=5.0, gt=0, le=300)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("must be a postgresql:// or postgresql+psycopg:// URL")
        return value

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver, whatever scheme the operator wrote."""
        _, _, rest = self.database_url.partition("://")
        return f"postgresql+psycopg://{rest}"

    @property
    def libpq_url(self) -> str:
        """The URL as libpq (psycopg.connect) understands it."""
        _, _, rest = self.database_url.partition("://")
        return f"postgresql://{rest}"


class RelaySettings(_Base):
    """Outbox relay tuning."""

    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    # LISTEN/NOTIFY wakes the relay at once; this poll only covers a lost notification.
    relay_idle_poll_s: float = Field(default=1.0, gt=0, le=60)
    relay_max_shards_per_batch: int = Field(default=16, ge=1, le=256)
    # After a notification, wait this long for more commits to join the batch: under load
    # every payment commits twice, and a batch per commit cost a few round trips each.
    # 10 ms rather than 5: at 100 commits/s a batch then takes ~1.3 rows instead of ~1.1
    # (20% fewer produce requests, 21% less relay CPU, 26% less of its PostgreSQL CPU per
    # row) for ~3 ms more from commit to Kafka at the median.
    relay_linger_s: float = Field(default=0.010, ge=0, le=1)
    # Rows flushed to Kafka and then marked published together, in their own commit: a
    # crash mid-batch republishes at most this many rows (same ce_id, consumers dedupe).
    # Smaller means fewer duplicates after a crash but a round trip more per chunk.
    relay_publish_chunk: int = Field(default=50, ge=1, le=10_000)


_S = TypeVar("_S", bound=BaseSettings)


def load(cls: type[_S]) -> _S:
    """Build `cls` from the environment or raise SettingsError naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {_PREFIX}{field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None
