"""Prometheus metrics of the ingest API (one registry per app, so tests stay isolated)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "paystream_ingest_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "paystream_ingest_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.commands = Counter(
            "paystream_ingest_commands_published_total",
            "Commands acknowledged by Kafka",
            ["type"],
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "paystream_ingest_publish_failures_total",
            "Commands Kafka did not acknowledge (answered 503)",
            ["maybe_persisted"],
            registry=self.registry,
        )
        self.replays = Counter(
            "paystream_ingest_idempotent_replays_total",
            "Requests that repeated an Idempotency-Key",
            ["outcome"],
            registry=self.registry,
        )
