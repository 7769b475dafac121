"""What the callback worker and the reconciler need, built once per process (or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from paystream_core.ports import PaymentStore
from paystream_gateways.manager import ConnectionSource, GatewayManager
from paystream_messaging.schemas import SchemaRegistry
from paystream_provider_reports.metrics import CallbackMetrics
from paystream_streams.records import DeadLetters


@dataclass
class CallbackDeps:
    store: PaymentStore
    registry: SchemaRegistry
    gateways: GatewayManager
    connections: ConnectionSource
    dead_letters: DeadLetters
    metrics: CallbackMetrics = field(default_factory=CallbackMetrics)

    def count_dead(self, reason: str) -> None:
        self.metrics.dead_letters.labels(reason).inc()
