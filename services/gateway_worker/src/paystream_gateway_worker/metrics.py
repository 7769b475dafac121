"""Prometheus metrics of the gateway worker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paystream_messaging.gateway_health import STATES, HealthRecord


class HealthViewStatus(Protocol):
    """The breaker view's reader (`paystream_messaging.gateway_health_topic.HealthTopic`)."""

    @property
    def caught_up(self) -> bool: ...

    def seconds_since_record(self) -> float | None: ...


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    last_progress: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.commands = Counter(
            "paystream_worker_commands_total",
            "Commands handled by result",
            ["result"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "paystream_worker_dead_letters_total",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "paystream_worker_gateway_attempts_total",
            "Gateway attempts by result",
            ["gateway", "result"],
            registry=self.registry,
        )
        self.resends = Counter(
            "paystream_worker_gateway_resends_total",
            "Provider requests sent again at once on another connection: the kept-alive"
            " connection they were written on had been closed (only replayable requests)",
            ["provider"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "paystream_worker_gateway_call_seconds",
            "Gateway call latency (with retries)",
            ["gateway"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "paystream_worker_in_flight", "Commands being processed", registry=self.registry
        )
        self.breaker_open = Gauge(
            "paystream_worker_breaker_open",
            "1 while a gateway's breaker is open",
            ["gateway"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "paystream_gateway_breaker_state",
            "1 for the state of a gateway's shared breaker as this worker sees it, 0 for others",
            ["gateway", "state"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "paystream_gateway_breaker_transitions_total",
            "Shared breaker state changes seen by this worker (made by any worker)",
            ["gateway", "to"],
            registry=self.registry,
        )
        self.breaker_probes = Counter(
            "paystream_gateway_breaker_probes_total",
            "Half-open probe lease claims (granted, denied) and probes (succeeded, failed)",
            ["gateway", "result"],
            registry=self.registry,
        )
        self.health_publish_errors = Counter(
            "paystream_gateway_health_publish_errors_total",
            "Breaker changes this worker could not publish on the gateway-health topic",
            registry=self.registry,
        )
        self.health_view_caught_up = Gauge(
            "paystream_gateway_health_view_caught_up",
            "1 once this worker's breaker view has read the gateway-health topic to its end",
            registry=self.registry,
        )
        self.health_view_record_age = Gauge(
            "paystream_gateway_health_view_seconds_since_record",
            "Seconds since this worker's breaker view last received a record (-1: none yet;"
            " records come only with changes)",
            registry=self.registry,
        )
        self.health_reader_errors = Counter(
            "paystream_gateway_health_reader_errors_total",
            "Times the gateway-health reader failed and was restarted (its view stood still)",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "paystream_worker_batch_size",
            "Commands taken in together (one intake transaction per tenant)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )
        self.anomalies = Counter(
            "paystream_anomalies_total",
            "Provider reports contradicting our records (alert on any increase)",
            ["source", "kind"],
            registry=self.registry,
        )

    def breaker_changed(self, before: HealthRecord | None, after: HealthRecord) -> None:
        """A gateway's shared breaker as this worker's view now has it (from any worker)."""
        for state in STATES:
            self.breaker_state.labels(after.gateway, state).set(1 if state == after.state else 0)
        if after.state != (before.state if before is not None else "closed"):
            self.breaker_transitions.labels(after.gateway, after.state).inc()

    def watch_health_view(self, view: HealthViewStatus) -> None:
        """Read the view's reader state at every scrape."""
        self.health_view_caught_up.set_function(lambda: 1.0 if view.caught_up else 0.0)

        def age() -> float:
            since = view.seconds_since_record()
            return -1.0 if since is None else since

        self.health_view_record_age.set_function(age)

    def resent(self, provider: str) -> None:
        self.resends.labels(provider).inc()

    def probe(self, gateway: str, result: str) -> None:
        self.breaker_probes.labels(gateway, result).inc()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()
