"""What the gateway worker's handlers need, built once per process (or by a test)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from paystream_core.ports import PaymentStore
from paystream_gateway_worker.metrics import WorkerMetrics
from paystream_gateway_worker.routing_state import RoutingState
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.protocol import Gateway
from paystream_gateways.resilience import Breakers
from paystream_keyring import KeyRing
from paystream_messaging.schemas import SchemaRegistry
from paystream_streams.records import DeadLetters


class HealthView(Protocol):
    """The shared breaker view's reader (`gateway_health_topic.HealthTopic`)."""

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class GatewayLookup(Protocol):
    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> Gateway: ...


@dataclass
class WorkerDeps:
    settings: GatewayWorkerSettings
    store: PaymentStore
    registry: SchemaRegistry
    gateways: GatewayLookup
    keyring: KeyRing
    dead_letters: DeadLetters
    breakers: Breakers
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    health: HealthView | None = None  # None in tests with in-process breakers
    routing: RoutingState = field(init=False)

    def __post_init__(self) -> None:
        self.routing = RoutingState(self.settings, self.metrics.registry)

    def count_dead(self, reason: str) -> None:
        self.metrics.dead_letters.labels(reason).inc()
