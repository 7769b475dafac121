"""Prometheus metrics of the gateway worker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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

    def progressed(self) -> None:
        self.last_progress = time.monotonic()
