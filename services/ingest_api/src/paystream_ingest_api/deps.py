"""What the ingest handlers need, built once per process (or by a test) and passed in."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_ingest_api.auth import ApiKeyCache
from paystream_ingest_api.metrics import IngestMetrics
from paystream_ingest_api.settings import IngestSettings
from paystream_messaging.async_publisher import AsyncPublisher
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.pool import HotPool


@dataclass(frozen=True)
class SealedDestination:
    ciphertext_b64: str
    key_id: str


# (tenant, transaction, cleartext JSON) -> ciphertext bound to that tenant and transaction.
Sealer = Callable[[uuid.UUID, uuid.UUID, bytes], SealedDestination]


@dataclass
class IngestDeps:
    settings: IngestSettings
    publisher: AsyncPublisher
    sessions: async_sessionmaker[AsyncSession]
    pool: HotPool  # plain psycopg, for the one statement per POST
    registry: SchemaRegistry
    seal_destination: Sealer
    metrics: IngestMetrics = field(default_factory=IngestMetrics)
    auth_cache: ApiKeyCache = field(default_factory=ApiKeyCache)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
