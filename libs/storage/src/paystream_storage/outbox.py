"""The transactional outbox: events written in the same DB transaction as the change they
describe (`payments.PgPaymentUnit.apply`), published in order by the relay."""

from __future__ import annotations

import zlib

from paystream_storage.models import OUTBOX_SHARDS


def shard_for(key: str) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    return zlib.crc32(key.encode()) % OUTBOX_SHARDS
