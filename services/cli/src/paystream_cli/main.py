"""The `paystream` command line: the root group; each command group is a module of
`paystream_cli.commands`."""

from __future__ import annotations

import click

from paystream_cli.commands.audit import audit
from paystream_cli.commands.bench import bench
from paystream_cli.commands.connections import connections
from paystream_cli.commands.dead_letters import dead_letters
from paystream_cli.commands.dev import dev
from paystream_cli.commands.gateways import gateways
from paystream_cli.commands.keys import keys
from paystream_cli.commands.migrate import migrate
from paystream_cli.commands.routes import routes
from paystream_cli.commands.sandbox import sandbox
from paystream_cli.commands.serve import serve
from paystream_cli.commands.tenants import tenants
from paystream_cli.commands.topics import topics
from paystream_cli.commands.transactions import transactions
from paystream_cli.commands.worker import worker


@click.group()
def cli() -> None:
    """paystream: Kafka-driven asynchronous payment processing."""


for command in (
    audit,
    bench,
    connections,
    dead_letters,
    dev,
    gateways,
    keys,
    migrate,
    routes,
    sandbox,
    serve,
    tenants,
    topics,
    transactions,
    worker,
):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
