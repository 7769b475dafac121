"""The ingest API's Idempotency-Key reservation: one statement per request (migration 0007).

The key is bound to the first body it is sent with, before the command is published, so a
reused key with another body gets 409 every time, whatever the timing. A key whose first
request got a 503 stays bound to that body: retrying it with the same key and the same
body is always safe (the CloudEvent id is the same), sending another body is a conflict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from paystream_storage.pool import HotPool

_RESERVE = (
    "SELECT stored_hash, status, version FROM paystream_reserve_idempotency_key(%s, %s, %s, %s)"
)


@dataclass(frozen=True, slots=True)
class Reservation:
    payload_hash: str  # the body the key is bound to (compare with the request's)
    status: str | None  # the stored transaction's status, once the worker stored it
    version: int | None


async def reserve_idempotency_key(
    pool: HotPool,
    tenant_id: uuid.UUID,
    key: str,
    payload_hash: str,
    transaction_id: uuid.UUID,
) -> Reservation:
    async with pool.connection() as conn:  # autocommit: the statement commits by itself
        cursor = await conn.execute(_RESERVE, (tenant_id, key, payload_hash, transaction_id))
        row = await cursor.fetchone()
    assert row is not None  # the function always returns one row
    return Reservation(row[0], row[1], row[2])
