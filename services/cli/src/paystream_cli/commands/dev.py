"""`paystream dev` (the stack it runs: `paystream_cli.dev_stack`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from paystream_cli import logs
from paystream_cli.common import fail


@click.command()
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
    from paystream_cli import dev_stack

    logs.setup("dev")
    try:
        code = dev_stack.run(home.absolute())
    except dev_stack.DevStartError as exc:
        fail(str(exc))
    sys.exit(code)
