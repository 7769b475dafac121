"""`paystream gateways list|down|up|health`.

Exit codes: 0 done, 1 the health topic could not be read or written within HEALTH_TIMEOUT_S
(broker away, topic missing or not one partition; `down`/`up` have then changed routing in
PostgreSQL all the same), 2 usage or settings error (`health` without
PAYSTREAM_KAFKA_BOOTSTRAP), or no such gateway.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Literal

import click

from paystream_cli.common import database, fail, run_owner, settings

# Reading the whole (compacted, small) health topic takes well under a second; this bounds
# how long a command waits for a broker that is away before it exits 1.
HEALTH_TIMEOUT_S = 15.0

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_messaging.gateway_health import HealthRecord


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
    state: Literal["up", "down"] = "up" if enabled else "down"
    click.echo(f"{code} is {state}: every worker routes accordingly from its next attempt")
    _publish_operator(code, state)


def _publish_operator(code: str, operator: Literal["up", "down"]) -> None:
    """Show the operator's switch in the shared health view, keeping the gateway's breaker
    fields as the topic has them. Routing itself follows PostgreSQL, so without a broker
    configured this is skipped with a note."""
    import dataclasses
    import getpass
    import socket
    import time

    from paystream_config import KafkaSettings
    from paystream_messaging.async_publisher import PublishFailed
    from paystream_messaging.gateway_health import closed
    from paystream_messaging.gateway_health_topic import (
        TopicLayoutError,
        publish_record,
        read_view,
    )

    if not os.environ.get("PAYSTREAM_KAFKA_BOOTSTRAP"):
        click.echo("health view not updated: PAYSTREAM_KAFKA_BOOTSTRAP is not set")
        return
    kafka = settings(KafkaSettings)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    try:
        current = read_view(kafka, timeout_s=HEALTH_TIMEOUT_S).get(code) or closed(code)
        record = dataclasses.replace(
            current,
            event="operator",
            operator=operator,
            by=f"cli:{user}@{socket.gethostname()}",
            at=time.time(),
            reason=f"paystream gateways {operator}",
        )
        publish_record(kafka, record, timeout_s=HEALTH_TIMEOUT_S)
    except (TimeoutError, TopicLayoutError, PublishFailed) as exc:
        click.echo(f"paystream: the gateway health view was not updated: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{code} is {operator} in the gateway health view")


@gateways.command("health")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, keyed by gateway.")
def gateways_health(as_json: bool) -> None:
    """Every gateway's shared circuit breaker, as the workers see it: state, consecutive
    failures, open until, probe lease holder, operator switch, last change by whom and why.
    A gateway nobody reported on is closed."""
    from paystream_config import KafkaSettings
    from paystream_messaging.gateway_health import to_json
    from paystream_messaging.gateway_health_topic import TopicLayoutError, read_view

    if not os.environ.get("PAYSTREAM_KAFKA_BOOTSTRAP"):
        fail("PAYSTREAM_KAFKA_BOOTSTRAP is not set: the gateway health view is on Kafka")
    try:
        view = read_view(settings(KafkaSettings), timeout_s=HEALTH_TIMEOUT_S)
    except (TimeoutError, TopicLayoutError) as exc:
        click.echo(f"paystream: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({code: to_json(r) for code, r in sorted(view.items())}, indent=2))
        return
    if not view:
        click.echo("no gateway health reported yet: every breaker is closed")
        return
    click.echo(
        f"{'GATEWAY':<12} {'STATE':<9} {'FAILS':>5}  {'OPEN UNTIL':<19} {'PROBE LEASE':<28}"
        f" {'OPERATOR':<8} LAST CHANGE"
    )
    for code, record in sorted(view.items()):
        click.echo(_health_line(code, record))


def _health_line(code: str, record: HealthRecord) -> str:
    import time
    from datetime import datetime

    def when(epoch: float | None) -> str:
        return "-" if epoch is None else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")

    lease = record.lease_held(time.time())
    holder = "-"
    if lease is not None:
        holder = f"{lease.holder} until {datetime.fromtimestamp(lease.until):%H:%M:%S}"
    return (
        f"{code:<12} {record.state:<9} {record.failures:>5}  {when(record.open_until):<19}"
        f" {holder:<28} {record.operator or '-':<8} {when(record.at)} {record.event}"
        f" by {record.by}: {record.reason}"
    )
