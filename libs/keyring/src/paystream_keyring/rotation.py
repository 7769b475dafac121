"""`paystream keys rotate`: every sealed column re-encrypted under the active key.

Two kinds of values are sealed today: connection credentials and withdrawal payout
destinations. Both go through one batch loop over `_SEALED`; a new sealed column is one
more entry there, not another copy of the loop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from paystream_keyring.ring import DecryptionError, KeyRing, Sealed
from paystream_storage.models import Connection, Transaction


@dataclass
class RotationReport:
    rotated: int = 0
    failed: list[tuple[str, uuid.UUID, str]] = field(default_factory=list)  # table, id, reason

    @property
    def ok(self) -> bool:
        return not self.failed


async def rotate_keys(
    owner_sessions: async_sessionmaker[AsyncSession], keyring: KeyRing, *, batch_size: int = 200
) -> RotationReport:
    """Re-encrypt every connection credential and payout destination not yet under the
    active key. Owner sessions: rotation crosses tenants.

    Batches commit one by one (no table-long transaction); rows are locked while resealed,
    so a concurrent rotate-secret waits instead of being overwritten. A row that cannot be
    decrypted is reported and left as it is. Safe to re-run: done rows are skipped.
    """
    report = RotationReport()
    for cols in _SEALED:
        await _rotate(owner_sessions, keyring, batch_size, report, cols)
    return report


@dataclass(frozen=True)
class _SealedColumns:
    """Where one kind of sealed value lives: its table, row id, tenant, key id, ciphertext."""

    label: str
    id: Any
    tenant: Any
    key_id: Any
    ciphertext: Any


_SEALED = (
    _SealedColumns(
        label="connections",
        id=Connection.id,
        tenant=Connection.tenant_id,
        key_id=Connection.credentials_key_id,
        ciphertext=Connection.credentials_ciphertext,
    ),
    _SealedColumns(
        label="transactions",
        id=Transaction.id,
        tenant=Transaction.tenant_id,
        key_id=Transaction.destination_key_id,
        ciphertext=Transaction.destination_ciphertext,
    ),
)


async def _rotate(
    sessions: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    batch: int,
    report: RotationReport,
    cols: _SealedColumns,
) -> None:
    after = uuid.UUID(int=0)
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(cols.id, cols.tenant, cols.key_id, cols.ciphertext)
                    .where(
                        cols.ciphertext.is_not(None),
                        cols.key_id != keyring.active_key_id,
                        cols.id > after,
                    )
                    .order_by(cols.id)
                    .limit(batch)
                    .with_for_update()
                )
            ).all()
            for row_id, tenant, kid, blob in rows:
                try:
                    sealed = keyring.reseal(tenant, row_id, Sealed(kid, bytes(blob)))
                except DecryptionError as exc:
                    report.failed.append((cols.label, row_id, str(exc)))
                    continue
                await session.execute(
                    update(cols.id.class_)
                    .where(cols.id == row_id)
                    .values({cols.ciphertext: sealed.ciphertext, cols.key_id: sealed.key_id})
                )
                report.rotated += 1
        if len(rows) < batch:
            return
        after = rows[-1][0]


async def count_by_key(owner_sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Rows per key id over credentials and destinations: shows when an old key is unused."""
    async with owner_sessions() as session:
        counts: dict[str, int] = {}
        for kid, n in (
            await session.execute(
                select(Connection.credentials_key_id, func.count()).group_by(
                    Connection.credentials_key_id
                )
            )
        ).all():
            counts[kid] = counts.get(kid, 0) + int(n)
        for dest_kid, n in (
            await session.execute(
                select(Transaction.destination_key_id, func.count())
                .where(Transaction.destination_ciphertext.is_not(None))
                .group_by(Transaction.destination_key_id)
            )
        ).all():
            name = dest_kid or "?"
            counts[name] = counts.get(name, 0) + int(n)
        return counts
