"""`paystream connections add|list|rotate-secret`.

Secrets are taken from a hidden prompt or a JSON file, never from arguments (they would
land in shell history and `ps`), and never printed back: after `connections add` the only
way to see a credential is to decrypt the row with the key ring, which the CLI never does
for display.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING

import click

from paystream_cli.common import database, fail, find_tenant, keyring, run_owner

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_gateways.connections import ConnectionRecord
    from paystream_gateways.specs import ProviderSpec


@click.group()
def connections() -> None:
    """Per-tenant provider connections; credentials are encrypted with the key ring."""


@connections.command("add")
@click.argument("tenant")
@click.argument("gateway_code")
@click.argument("code")
@click.option(
    "--credentials-file",
    type=click.File("r"),
    help="JSON object of credential fields ('-' reads stdin). Missing fields are prompted for.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A non-secret field (base_url, merchant_id...). Secret fields are refused here.",
)
def connections_add(
    tenant: str,
    gateway_code: str,
    code: str,
    credentials_file: IO[str] | None,
    sets: tuple[str, ...],
) -> None:
    """Add connection CODE of TENANT (name or id) to gateway GATEWAY_CODE.

    Secret fields are asked for with a hidden prompt unless given in --credentials-file.
    """
    from paystream_gateways.connections import ConnectionRepository
    from paystream_gateways.errors import GatewayNotFound, GatewaySetupError
    from paystream_gateways.registry import default_registry
    from paystream_storage.models import Gateway

    db = database()
    ring = keyring()
    registry = default_registry()

    async def provider_of(session: AsyncSession) -> str:
        gateway = await session.get(Gateway, gateway_code)
        if gateway is None:
            raise GatewayNotFound(gateway_code)
        return gateway.provider

    try:
        spec: ProviderSpec = registry.get(run_owner(db, provider_of))
    except GatewaySetupError as exc:
        fail(str(exc))
    values = _read_json_object(credentials_file) if credentials_file else {}
    values.update(_parse_sets(sets, spec.secret_fields))
    for f in spec.fields:
        if f.name in values or (not f.required and not sys.stdin.isatty()):
            continue
        label = f"{f.name}" + (f" ({f.help})" if f.help else "")
        if f.secret:
            values[f.name] = click.prompt(label, hide_input=True)
        else:
            answer = click.prompt(label, default=f.default or "", show_default=bool(f.default))
            if answer:
                values[f.name] = answer

    async def add(session: AsyncSession) -> ConnectionRecord:
        tenant_id = await _tenant_id(session, tenant)
        repo = ConnectionRepository(session, ring, registry)
        return await repo.add(tenant_id, gateway_code, code, values)

    try:
        record = run_owner(db, add)
    except GatewaySetupError as exc:
        fail(str(exc))
    click.echo(f"connection_id: {record.id}")
    click.echo(
        f"added {record.gateway_code}/{record.code} ({record.provider}) for tenant"
        f" {record.tenant_id}: version {record.version}, encrypted under key {record.key_id}"
    )
    click.echo(f"callback URL path: /v1/callbacks/{record.gateway_code}/{record.id}")


@connections.command("list")
@click.option("--tenant", help="Only this tenant (name or id).")
@click.option("--gateway", "gateway_code", help="Only this gateway code.")
def connections_list(tenant: str | None, gateway_code: str | None) -> None:
    """List connections (never their credentials)."""
    from paystream_gateways.connections import fetch_all
    from paystream_gateways.errors import GatewaySetupError

    async def action(session: AsyncSession) -> list[ConnectionRecord]:
        tenant_id = await _tenant_id(session, tenant) if tenant else None
        return await fetch_all(session, tenant_id, gateway_code=gateway_code)

    try:
        records = run_owner(database(), action)
    except GatewaySetupError as exc:
        fail(str(exc))
    header = ("ID", "TENANT", "GATEWAY", "PROVIDER", "CODE", "ENABLED", "VERSION", "KEY", "UPDATED")
    rows = [header] + [
        (
            str(r.id),
            str(r.tenant_id),
            r.gateway_code,
            r.provider,
            r.code,
            "yes" if r.enabled else "no",
            str(r.version),
            r.key_id,
            r.updated_at.isoformat(timespec="seconds"),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@connections.command("rotate-secret")
@click.argument("tenant")
@click.argument("gateway_code")
@click.argument("code")
@click.option(
    "--field",
    "fields",
    multiple=True,
    help="Field to replace (repeatable). Default: every secret field of the provider.",
)
@click.option(
    "--credentials-file",
    type=click.File("r"),
    help="JSON object with the new field values ('-' reads stdin) instead of prompts.",
)
def connections_rotate_secret(
    tenant: str,
    gateway_code: str,
    code: str,
    fields: tuple[str, ...],
    credentials_file: IO[str] | None,
) -> None:
    """Replace secrets of a connection; running gateways pick them up on their next call."""
    from paystream_gateways.connections import ConnectionRepository
    from paystream_gateways.errors import GatewaySetupError
    from paystream_gateways.registry import default_registry

    db = database()
    ring = keyring()
    registry = default_registry()

    async def find(session: AsyncSession) -> ConnectionRecord:
        tenant_id = await _tenant_id(session, tenant)
        repo = ConnectionRepository(session, ring, registry)
        return await repo.get_by_code(tenant_id, gateway_code, code)

    try:
        record = run_owner(db, find)
        spec = registry.get(record.provider)
    except GatewaySetupError as exc:
        fail(str(exc))
    if credentials_file:
        changes = _read_json_object(credentials_file)
    else:
        names = fields or tuple(f.name for f in spec.fields if f.secret)
        changes = {}
        for name in names:
            hidden = name in spec.secret_fields
            changes[name] = click.prompt(f"new {name}", hide_input=hidden)

    async def rotate(session: AsyncSession) -> ConnectionRecord:
        repo = ConnectionRepository(session, ring, registry)
        return await repo.rotate_secret(record.tenant_id, record.id, changes)

    try:
        updated = run_owner(db, rotate)
    except GatewaySetupError as exc:
        fail(str(exc))
    click.echo(
        f"rotated {', '.join(sorted(changes))} of {gateway_code}/{code}: version"
        f" {updated.version}, encrypted under key {updated.key_id}"
    )


async def _tenant_id(session: AsyncSession, tenant: str) -> uuid.UUID:
    from paystream_gateways.errors import GatewaySetupError

    found = await find_tenant(session, tenant)
    if found is None:
        raise GatewaySetupError(f"no tenant {tenant!r}")
    return found.id


def _read_json_object(stream: IO[str]) -> dict[str, str]:
    import json

    try:
        data = json.load(stream)
    except ValueError:
        fail("credentials file is not JSON")  # no detail: it would quote the content
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        fail("credentials file must be a JSON object of string fields")
    return data


def _parse_sets(pairs: tuple[str, ...], secret_fields: frozenset[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set expects FIELD=VALUE, got a value without '=' for {name!r}")
        if name in secret_fields:
            fail(f"{name} is secret: give it at the prompt or in --credentials-file")
        values[name] = value
    return values
