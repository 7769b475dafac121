"""`paystream migrate`."""

from __future__ import annotations

import click

from paystream_cli import logs
from paystream_cli.common import database


@click.command()
@click.option(
    "--downgrade", "down_to", metavar="REVISION", help="Downgrade to REVISION (base: empty)."
)
def migrate(down_to: str | None) -> None:
    """Apply database migrations (PAYSTREAM_DATABASE_URL)."""
    from paystream_storage import migrate as migrations

    logs.setup("migrate")
    db = database()
    if down_to:
        migrations.downgrade(db.sqlalchemy_url, down_to)
        click.echo(f"downgraded to {down_to}")
    else:
        migrations.upgrade(db.sqlalchemy_url)
        click.echo("database is at the latest revision")
