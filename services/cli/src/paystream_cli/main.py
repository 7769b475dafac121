"""The `paystream` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from paystream_cli import logs
from paystream_config import DatabaseSettings, KafkaSettings, SettingsError, load


def _fail(message: str) -> NoReturn:
    click.echo(f"paystream: {message}", err=True)
    sys.exit(2)


def _settings(
    cls: type[DatabaseSettings] | type[KafkaSettings],
) -> DatabaseSettings | KafkaSettings:
    try:
        return load(cls)
    except SettingsError as exc:
        _fail(str(exc))


def _db() -> DatabaseSettings:
    settings = _settings(DatabaseSettings)
    assert isinstance(settings, DatabaseSettings)
    return settings


def _kafka() -> KafkaSettings:
    settings = _settings(KafkaSettings)
    assert isinstance(settings, KafkaSettings)
    return settings


@click.group()
def cli() -> None:
    """paystream: Kafka-driven asynchronous payment processing."""


@cli.command()
@click.option(
    "--downgrade", "down_to", metavar="REVISION", help="Downgrade to REVISION (base: empty)."
)
def migrate(down_to: str | None) -> None:
    """Apply database migrations (PAYSTREAM_DATABASE_URL)."""
    from paystream_storage import migrate as migrations

    logs.setup("migrate")
    db = _db()
    if down_to:
        migrations.downgrade(db.sqlalchemy_url, down_to)
        click.echo(f"downgraded to {down_to}")
    else:
        migrations.upgrade(db.sqlalchemy_url)
        click.echo("database is at the latest revision")


@cli.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create the paystream topics that do not exist yet."""
    from paystream_messaging.topics import ensure_topics

    created = ensure_topics(_kafka())
    click.echo(f"created: {', '.join(created) or 'nothing (all exist)'}")


@cli.group()
def tenants() -> None:
    """Tenants and their API keys."""


@tenants.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create tenant NAME and print its API key (shown once, stored hashed)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_cli.admin import run_owner
    from paystream_storage.tenants import IssuedKey, create_tenant, issue_api_key, tenant_by_name

    async def action(session: AsyncSession) -> IssuedKey | None:
        if await tenant_by_name(session, name) is not None:
            return None
        tenant = await create_tenant(session, name)
        return await issue_api_key(session, tenant.id)

    issued = run_owner(_db(), action)
    if issued is None:
        _fail(f"tenant {name!r} already exists")
    click.echo(f"tenant_id: {issued.tenant_id}")
    click.echo(f"api_key:   {issued.api_key}")
    click.echo("Store the key now: it is not shown again.")


@tenants.command("revoke-keys")
@click.argument("name")
def tenants_revoke_keys(name: str) -> None:
    """Revoke every API key of tenant NAME."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_cli.admin import run_owner
    from paystream_storage.tenants import revoke_api_keys, tenant_by_name

    async def action(session: AsyncSession) -> int | None:
        tenant = await tenant_by_name(session, name)
        return None if tenant is None else await revoke_api_keys(session, tenant.id)

    revoked = run_owner(_db(), action)
    if revoked is None:
        _fail(f"no tenant {name!r}")
    click.echo(f"revoked {revoked} key(s)")


@cli.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=Path(".paystream"),
    show_default=True,
    envvar="PAYSTREAM_HOME",
    help="Runtime directory: PostgreSQL data, logs, dev.env.",
)
def dev(home: Path) -> None:
    """Run the whole stack on embedded Kafka and PostgreSQL until Ctrl-C."""
    from paystream_cli import dev as dev_stack

    logs.setup("dev")
    try:
        code = dev_stack.run(home.absolute())
    except dev_stack.DevStartError as exc:
        _fail(str(exc))
    sys.exit(code)


@cli.group()
def serve() -> None:
    """Run an HTTP service."""


@serve.command("ingest-api")
def serve_ingest_api() -> None:
    """Deposits and withdrawals over HTTP, published to Kafka (PAYSTREAM_INGEST_*)."""
    from paystream_ingest_api.main import run

    logs.setup("ingest-api")
    try:
        run()
    except SettingsError as exc:
        _fail(str(exc))


@cli.group()
def worker() -> None:
    """Run a worker process."""


@worker.command("gateway")
def worker_gateway() -> None:
    """Route commands to payment gateways (faust; PAYSTREAM_WORKER_*, PAYSTREAM_BREAKER_*)."""
    from paystream_gateway_worker.main import run

    logs.setup("gateway-worker")
    try:
        run()
    except SettingsError as exc:
        _fail(str(exc))


@cli.group()
def gateways() -> None:
    """Gateways: list them, take one out of routing for every worker, bring it back."""


@gateways.command("list")
def gateways_list() -> None:
    """Gateways with their state and the countries they serve."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_cli.admin import run_owner
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

    for line in run_owner(_db(), action):
        click.echo(line)


def _set_gateway(code: str, enabled: bool) -> None:
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_cli.admin import run_owner
    from paystream_storage.models import Gateway

    async def action(session: AsyncSession) -> int:
        result = await session.execute(
            update(Gateway).where(Gateway.code == code).values(enabled=enabled)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    if run_owner(_db(), action) != 1:
        _fail(f"no gateway {code!r}")
    state = "up" if enabled else "down"
    click.echo(f"{code} is {state}: every worker routes accordingly from its next attempt")


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


@worker.command("relay")
def worker_relay() -> None:
    """Publish the transactional outbox to Kafka."""
    from paystream_relay.main import run

    logs.setup("relay")
    try:
        run()
    except SettingsError as exc:
        _fail(str(exc))


@cli.group()
def bench() -> None:
    """Benchmarks: throughput and latency percentiles on this machine."""


@bench.command("relay")
@click.option("--rows", default=50_000, show_default=True, help="Backlog rows for the drain.")
@click.option("--rate", default=2_000.0, show_default=True, help="Steady-load rows/s.")
@click.option("--seconds", default=10.0, show_default=True, help="Steady-load duration.")
@click.option("--chunk", default=10, show_default=True, help="Rows per writing transaction.")
@click.option("--batch-size", default=500, show_default=True, help="Relay batch size.")
@click.option(
    "--home", type=click.Path(path_type=Path), default=Path(".paystream"), envvar="PAYSTREAM_HOME"
)
def bench_relay(
    rows: int, rate: float, seconds: float, chunk: int, batch_size: int, home: Path
) -> None:
    """Outbox relay rows/s and commit-to-publish latency (embedded or configured infra)."""
    from paystream_cli import bench_relay as bench_module

    logs.setup("bench")
    bench_module.run(home.absolute(), rows, chunk, batch_size, rate, seconds)


@bench.command("ingest")
@click.option("--requests", "total", default=20_000, show_default=True)
@click.option("--concurrency", default=50, show_default=True)
@click.option("--server", type=click.Choice(["uvicorn", "granian"]), default="uvicorn")
@click.option("--workers", default=1, show_default=True)
@click.option(
    "--home", type=click.Path(path_type=Path), default=Path(".paystream"), envvar="PAYSTREAM_HOME"
)
def bench_ingest(total: int, concurrency: int, server: str, workers: int, home: Path) -> None:
    """POST /v1/deposits requests/s and latency percentiles against a real ingest-api."""
    from paystream_cli import bench_ingest as bench_module

    logs.setup("bench")
    bench_module.run(home.absolute(), total, concurrency, server, workers)


@bench.command("worker")
@click.option("--commands", default=2000, show_default=True)
@click.option("--latency-ms", default=0, show_default=True, help="Sandbox provider latency.")
@click.option("--concurrency", default=32, show_default=True, help="Worker concurrency.")
@click.option("--workers", default=1, show_default=True, help="Gateway worker processes.")
@click.option("--rate", type=float, default=None, help="Commands/s to send (default: at once).")
def bench_worker(
    commands: int, latency_ms: int, concurrency: int, workers: int, rate: float | None
) -> None:
    """Commands/s through the gateway worker and command -> outcome latency percentiles."""
    from paystream_cli import bench_worker as bench_module

    logs.setup("bench")
    bench_module.run(commands, latency_ms, concurrency, workers, rate)


def _register_commands() -> None:
    from paystream_cli.commands_callbacks import (
        serve_callback_ingress,
        transactions,
        worker_callback,
        worker_reconciler,
    )
    from paystream_cli.commands_gateways import connections, keys, sandbox

    cli.add_command(connections)
    cli.add_command(keys)
    cli.add_command(sandbox)
    cli.add_command(transactions)
    serve.add_command(serve_callback_ingress)
    worker.add_command(worker_callback)
    worker.add_command(worker_reconciler)


_register_commands()

if __name__ == "__main__":
    cli()
