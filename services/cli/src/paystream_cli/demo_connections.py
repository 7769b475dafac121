"""The demo tenant's connections to the provider sandbox, made fresh on every dev start.

The sandbox keeps its accounts in memory, so each start provisions new sandbox accounts
and rotates them into the same connection rows (ids stay stable: callback URLs hold them).
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from paystream_cli.demo_seed import GATEWAYS
from paystream_gateways.connections import ConnectionRepository, fetch_by_code
from paystream_gateways.registry import default_registry
from paystream_keyring import KeyRing
from paystream_sandbox.client import SandboxAdmin

CONNECTION_CODE = "demo"


async def provision(
    session: AsyncSession,
    keyring: KeyRing,
    tenant_id: uuid.UUID,
    *,
    sandbox_url: str,
    callback_url: str,
) -> dict[str, uuid.UUID]:
    """gateway code -> connection id, credentials pointing at the sandbox."""
    repo = ConnectionRepository(session, keyring, default_registry())
    out: dict[str, uuid.UUID] = {}
    with SandboxAdmin(sandbox_url) as admin:
        for code, (provider, _, _) in GATEWAYS.items():
            existing = await fetch_by_code(session, tenant_id, code, CONNECTION_CODE)
            cid = existing.id if existing else uuid.uuid4()
            webhook = f"{callback_url}/v1/callbacks/{code}/{cid}"
            creds = await asyncio.to_thread(admin.provision, provider, webhook_url=webhook)
            if existing:
                await repo.rotate_secret(tenant_id, cid, creds)
            else:
                await repo.add(tenant_id, code, CONNECTION_CODE, creds, connection_id=cid)
            out[code] = cid
    return out
