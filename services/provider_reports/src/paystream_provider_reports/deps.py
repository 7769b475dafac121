"""What the callback worker and the reconciler need, built once per process (or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_callback_worker.metrics import CallbackMetrics
from paystream_gateways.manager import ConnectionSource, GatewayManager
from paystream_messaging.schemas import SchemaRegistry
from paystream_streams.records import DeadLetters


@dataclass
class CallbackDeps:
    sessions: async_sessionmaker[AsyncSession]
    registry: SchemaRegistry
    gateways: GatewayManager
    connections: ConnectionSource
    dead_letters: DeadLetters
    metrics: CallbackMetrics = field(default_factory=CallbackMetrics)
