"""Prometheus metrics of the callback worker and the reconciler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class CallbackMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    last_progress: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.callbacks = Counter(
            "paystream_callback_worker_callbacks_total",
            "Callbacks handled by result",
            ["gateway", "result"],
            registry=self.registry,
        )
        self.anomalies = Counter(
            "paystream_anomalies_total",
            "Provider reports contradicting our records (alert on any increase)",
            ["source", "kind"],
            registry=self.registry,
        )
        self.parked = Counter(
            "paystream_callback_worker_parked_total",
            "Orphan callbacks parked / resolved",
            ["event"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "paystream_callback_worker_dead_letters_total",
            "Records sent to the dead-letter topic",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "paystream_callback_worker_in_flight",
            "Callbacks being processed",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "paystream_callback_worker_batch_size",
            "Callbacks taken in together (one transaction per tenant)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )
        # Reconciler
        self.lookups = Counter(
            "paystream_reconciler_lookups_total",
            "Provider status lookups by result",
            ["gateway", "result"],
            registry=self.registry,
        )
        self.lookup_resends = Counter(
            "paystream_gateway_lookup_resends_total",
            "Provider status lookups sent again at once on another connection: the"
            " kept-alive connection they were written on had been closed",
            ["provider"],
            registry=self.registry,
        )
        self.unresolved = Gauge(
            "paystream_reconciler_unresolved",
            "pending/unknown transactions older than the horizon (need a human)",
            registry=self.registry,
        )
        self.expired = Counter(
            "paystream_reconciler_expired_total",
            "action_required transactions failed as expired",
            registry=self.registry,
        )
        # What waits, read every reconciler round (alert on the ages).
        self.waiting = Gauge(
            "paystream_transactions_waiting",
            "pending/unknown transactions by gateway and status",
            ["gateway", "status"],
            registry=self.registry,
        )
        self.waiting_oldest = Gauge(
            "paystream_transactions_waiting_oldest_age_seconds",
            "Age (since creation) of the oldest pending/unknown transaction per gateway",
            ["gateway", "status"],
            registry=self.registry,
        )
        self.outbox_unpublished = Gauge(
            "paystream_outbox_unpublished",
            "Outbox rows the relay has not published yet",
            registry=self.registry,
        )
        self.outbox_oldest = Gauge(
            "paystream_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox row the relay has not published (0: none)",
            registry=self.registry,
        )
        self.backlog_last_success = Gauge(
            "paystream_backlog_last_success_timestamp_seconds",
            "When the backlog gauges were last read (alert when it stops advancing)",
            registry=self.registry,
        )
        # The money audit (paystream audit), run by the reconciler on an interval.
        self.audit_violations = Gauge(
            "paystream_audit_violations",
            "Violations found by the last money audit, per check (alert on any above 0)",
            ["check"],
            registry=self.registry,
        )
        self.audit_last_success = Gauge(
            "paystream_audit_last_success_timestamp_seconds",
            "When the money audit last completed (alert when it stops advancing)",
            registry=self.registry,
        )
        self.audit_duration = Gauge(
            "paystream_audit_duration_seconds",
            "How long the last money audit took",
            registry=self.registry,
        )

    def lookup_resent(self, provider: str) -> None:
        self.lookup_resends.labels(provider).inc()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()
