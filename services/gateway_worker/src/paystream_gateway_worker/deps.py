"""What the gateway worker's handlers need, built once per process (or by a test)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_gateway_worker.metrics import WorkerMetrics
from paystream_gateway_worker.resilience import Breakers
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_gateways.credentials import KeyRing
from paystream_gateways.protocol import Gateway
from paystream_messaging.schemas import SchemaRegistry
from paystream_streams.records import DeadLetters, RawRecord

__all__ = ["DeadLetters", "GatewayLookup", "RawRecord", "WorkerDeps"]


class GatewayLookup(Protocol):
    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> Gateway: ...


@dataclass
class WorkerDeps:
    settings: GatewayWorkerSettings
    sessions: async_sessionmaker[AsyncSession]
    registry: SchemaRegistry
    gateways: GatewayLookup
    keyring: KeyRing
    dead_letters: DeadLetters
    breakers: Breakers
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
