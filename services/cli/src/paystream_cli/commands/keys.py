"""`paystream keys rotate|generate`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from paystream_cli.common import database, fail, keyring

if TYPE_CHECKING:
    import uuid


@click.group()
def keys() -> None:
    """The encryption key ring (PAYSTREAM_KEYRING, PAYSTREAM_ACTIVE_KEY_ID)."""


@keys.command("rotate")
@click.option("--batch-size", default=200, show_default=True, help="Rows per transaction.")
def keys_rotate(batch_size: int) -> None:
    """Re-encrypt credentials and payout destinations under the active key.

    Add the new key to PAYSTREAM_KEYRING, make it PAYSTREAM_ACTIVE_KEY_ID, restart the
    services, then run this. Old keys keep decrypting until removed; remove one only when
    this command reports no rows left under it.
    """
    import asyncio

    from paystream_keyring import count_by_key, rotate_keys
    from paystream_storage.db import create_engine, sessionmaker

    db = database()
    ring = keyring()

    async def go() -> tuple[int, list[tuple[str, uuid.UUID, str]], dict[str, int]]:
        engine = create_engine(db)
        try:
            sessions = sessionmaker(engine)
            report = await rotate_keys(sessions, ring, batch_size=batch_size)
            return report.rotated, report.failed, await count_by_key(sessions)
        finally:
            await engine.dispose()

    rotated, failed, counts = asyncio.run(go())
    click.echo(f"re-encrypted {rotated} row(s) under key {ring.active_key_id}")
    for table, row_id, reason in failed:
        click.echo(f"FAILED {table} {row_id}: {reason}", err=True)
    click.echo(
        "rows per key: " + (", ".join(f"{k}={n}" for k, n in sorted(counts.items())) or "none")
    )
    unused = [k for k in ring.key_ids if k != ring.active_key_id and not counts.get(k)]
    if unused:
        click.echo(f"no rows left under: {', '.join(unused)} (safe to remove from the ring)")
    if failed:
        sys.exit(1)


@keys.command("generate")
@click.argument("key_id")
def keys_generate(key_id: str) -> None:
    """Print a new `KEY_ID:base64key` entry for PAYSTREAM_KEYRING.

    This prints key material: send it straight to your secret store.
    """
    from paystream_keyring import new_key_entry

    try:
        click.echo(new_key_entry(key_id))
    except ValueError as exc:
        fail(str(exc))
