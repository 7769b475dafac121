"""Writing events to the transactional outbox, inside the caller's DB transaction."""

from __future__ import annotations

import uuid
import zlib
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.models import OUTBOX_SHARDS, OutboxRow


def shard_for(key: str) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    return zlib.crc32(key.encode()) % OUTBOX_SHARDS


def add_event(
    session: AsyncSession,
    registry: SchemaRegistry,
    *,
    tenant_id: uuid.UUID,
    topic: str,
    key: str,
    event_id: uuid.UUID,
    event_type: str,
    source: str,
    occurred_at: datetime,
    data: dict[str, Any],
    traceparent: str | None = None,
) -> OutboxRow:
    """Stage an event; it is published only if the surrounding transaction commits.

    The data is validated here, where a bug can still roll the state change back, so the
    relay never meets a row it cannot publish.
    """
    registry.validate(event_type, data)
    if data.get("tenant_id") != str(tenant_id):
        raise ValueError(f"event data names tenant {data.get('tenant_id')}, not {tenant_id}")
    row = OutboxRow(
        tenant_id=tenant_id,
        topic=topic,
        key=key,
        shard=shard_for(key),
        event_id=event_id,
        event_type=event_type,
        source=source,
        occurred_at=occurred_at,
        data=data,
        traceparent=traceparent,
    )
    session.add(row)
    return row
