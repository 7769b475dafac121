"""The gateway that verifies and parses a connection's callbacks.

Unlike payment calls, callbacks must still be understood after an operator disabled a
connection: payments already in flight there finish by callback. So a disabled connection
still yields its gateway here (the manager refuses it for new payments only).
"""

from __future__ import annotations

import dataclasses
import uuid

from paystream_gateways.connections import ConnectionRecord
from paystream_gateways.errors import ConnectionNotFound
from paystream_gateways.manager import ConnectionSource, GatewayManager
from paystream_gateways.protocol import Gateway


async def callback_gateway(
    manager: GatewayManager,
    source: ConnectionSource,
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
) -> tuple[ConnectionRecord, Gateway]:
    """The connection and its gateway client; ConnectionNotFound when there is none."""
    record = await source.load(tenant_id, connection_id)
    if record is None:
        manager.invalidate(connection_id)
        raise ConnectionNotFound(connection_id)
    usable = record if record.enabled else dataclasses.replace(record, enabled=True)
    return record, await manager.for_record(usable)
