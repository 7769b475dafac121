"""`paystream gateways list|down|up`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from paystream_cli.common import database, fail, run_owner

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


@click.group()
def gateways() -> None:
    """Gateways: list them, take one out of routing for every worker, bring it back."""


@gateways.command("list")
def gateways_list() -> None:
    """Gateways with their state and the countries they serve."""
    from sqlalchemy import select

    from paystream_storage.models import Gateway, GatewayCountry

    async def action(session: AsyncSession) -> list[str]:
        lines = []
        for gw in (await session.execute(select(Gateway).order_by(Gateway.code))).scalars():
            routes = (
                await session.execute(
                    select(GatewayCountry)
                    .where(GatewayCountry.gateway_code == gw.code)
                    .order_by(GatewayCountry.country, GatewayCountry.transaction_type)
                )
            ).scalars()
            served = ", ".join(f"{r.country}/{r.transaction_type}#{r.priority}" for r in routes)
            state = "up" if gw.enabled else "DOWN"
            lines.append(
                f"{gw.code:<12} {gw.provider:<8} {state:<5} {','.join(gw.currencies)}  {served}"
            )
        return lines

    for line in run_owner(database(), action):
        click.echo(line)


@gateways.command("down")
@click.argument("code")
def gateways_down(code: str) -> None:
    """Take gateway CODE out of routing (new attempts skip it)."""
    _set_gateway(code, False)


@gateways.command("up")
@click.argument("code")
def gateways_up(code: str) -> None:
    """Put gateway CODE back into routing."""
    _set_gateway(code, True)


def _set_gateway(code: str, enabled: bool) -> None:
    from sqlalchemy import update

    from paystream_storage.models import Gateway

    async def action(session: AsyncSession) -> int:
        result = await session.execute(
            update(Gateway).where(Gateway.code == code).values(enabled=enabled)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    if run_owner(database(), action) != 1:
        fail(f"no gateway {code!r}")
    state = "up" if enabled else "down"
    click.echo(f"{code} is {state}: every worker routes accordingly from its next attempt")
