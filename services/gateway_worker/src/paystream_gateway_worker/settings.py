"""Settings of the gateway worker process."""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, model_validator

from paystream_config import DatabaseSettings, KafkaSettings, RoutingSettings

# What the probe lease must hold beyond its claim's wait and the call's timeouts: workers'
# clocks differ (another worker judges our lease's expiry by its own clock) and the call
# starts a little after the grant.
LEASE_MARGIN_S: Final = 2.0


class GatewayWorkerSettings(KafkaSettings, DatabaseSettings, RoutingSettings):
    worker_group: str = Field(default="paystream-gateway-worker", min_length=1)
    # Commands in flight per process (read, not yet finished): provider calls are slow, so
    # this bounds throughput at about concurrency / provider latency. Offsets still commit
    # only up to the oldest unfinished command.
    worker_concurrency: int = Field(default=256, ge=1, le=10_000)
    # A batch is what arrived while the previous one was taken in, up to this many...
    worker_batch_max: int = Field(default=200, ge=1, le=10_000)
    # ...waiting at most this long for more once the first record is there (latency vs
    # fewer, bigger database transactions).
    worker_batch_linger_s: float = Field(default=0.002, ge=0, le=1)
    # tansu answers a fetch only when this wait expires, so it is also how many records a
    # fetch brings, hence the size of the batches: 100 ms instead of 25 cut the whole
    # machine's CPU per payment by 14% at 150/s and 24% at 50/s, raised `--find-max` from
    # 165-191/s to 220/s, and cost ~25 ms of latency at 50/s (p50/p99 39/67 -> 62/101 ms).
    # (A Kafka broker answers as soon as records are there: the wait then only bounds an
    # empty fetch, and `worker_batch_linger_s` is what gathers a batch.)
    worker_fetch_wait_ms: int = Field(default=100, ge=1, le=5000)
    # Tries of one attempt on ambiguous errors (same idempotency key every time).
    worker_retry_attempts: int = Field(default=3, ge=1, le=10)
    worker_retry_base_s: float = Field(default=0.2, gt=0, le=30)
    worker_retry_max_s: float = Field(default=5.0, gt=0, le=300)
    # Breakers are shared by every worker through <prefix>.gateway-health: failures count
    # across workers, and an open breaker is open everywhere.
    breaker_fail_max: int = Field(default=5, ge=1, le=1000)
    breaker_reset_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # The half-open probe lease: its one call must end within it or another worker may
    # probe too, so it must exceed claim wait + connect + read timeouts + 2 s (checked at
    # start); the lease of a worker that died blocks probing this long. A probe that ends
    # releases it at once.
    breaker_probe_lease_s: float = Field(default=25.0, gt=0, le=600)
    # How long a call waits for its lease claim to come back through the topic before it is
    # refused as breaker-open (and falls back: nothing was sent).
    breaker_claim_wait_s: float = Field(default=2.0, gt=0, le=30)
    # The health view's fetch wait: tansu answers a fetch only when it expires, so it bounds
    # how late a breaker opened by another worker shows here (a second is the promise), and
    # an idle view fetches this often.
    breaker_view_fetch_wait_ms: int = Field(default=250, ge=1, le=1000)
    # At start, how long the worker reads the health topic to its end before it takes
    # commands anyway (with an error in the log; it goes on reading).
    breaker_view_catch_up_s: float = Field(default=30.0, gt=0, le=600)
    # Provider calls: connecting is cheap to bound; once sent, a timeout is ambiguous, so
    # keep the read timeout above the providers' p99.
    gateway_connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    gateway_read_timeout_s: float = Field(default=15.0, gt=0, le=300)
    worker_web_host: str = "127.0.0.1"  # 0.0.0.0 in a pod, so the kubelet can probe it
    worker_web_port: int = Field(default=0, ge=0, le=65535, description="0: no health server")
    # A consumer that has records to process but makes no progress for this long is
    # reported unhealthy by /healthz, so an orchestrator restarts it.
    worker_stall_after_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlasts_the_probe(self) -> Self:
        # The lease runs from the claim: it must cover waiting for the grant and the whole
        # probe call, or a second probe could start while the first is still in flight.
        needed = (
            self.breaker_claim_wait_s
            + self.gateway_connect_timeout_s
            + self.gateway_read_timeout_s
            + LEASE_MARGIN_S
        )
        if self.breaker_probe_lease_s < needed:
            raise ValueError(
                f"breaker_probe_lease_s ({self.breaker_probe_lease_s:g}) must be at least"
                f" breaker_claim_wait_s + gateway_connect_timeout_s + gateway_read_timeout_s"
                f" + {LEASE_MARGIN_S:g} s = {needed:g}: a probe must end within its lease"
            )
        return self
