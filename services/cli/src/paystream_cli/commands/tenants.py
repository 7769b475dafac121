"""`paystream tenants create|revoke-keys`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from paystream_cli.common import database, fail, run_owner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_storage.tenants import IssuedKey


@click.group()
def tenants() -> None:
    """Tenants and their API keys."""


@tenants.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create tenant NAME and print its API key (shown once, stored hashed)."""
    from paystream_storage.tenants import create_tenant, issue_api_key, tenant_by_name

    async def action(session: AsyncSession) -> IssuedKey | None:
        if await tenant_by_name(session, name) is not None:
            return None
        tenant = await create_tenant(session, name)
        return await issue_api_key(session, tenant.id)

    issued = run_owner(database(), action)
    if issued is None:
        fail(f"tenant {name!r} already exists")
    click.echo(f"tenant_id: {issued.tenant_id}")
    click.echo(f"api_key:   {issued.api_key}")
    click.echo("Store the key now: it is not shown again.")


@tenants.command("revoke-keys")
@click.argument("name")
def tenants_revoke_keys(name: str) -> None:
    """Revoke every API key of tenant NAME."""
    from paystream_storage.tenants import revoke_api_keys, tenant_by_name

    async def action(session: AsyncSession) -> int | None:
        tenant = await tenant_by_name(session, name)
        return None if tenant is None else await revoke_api_keys(session, tenant.id)

    revoked = run_owner(database(), action)
    if revoked is None:
        fail(f"no tenant {name!r}")
    click.echo(f"revoked {revoked} key(s)")
