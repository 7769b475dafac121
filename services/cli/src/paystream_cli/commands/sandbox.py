"""`paystream sandbox`."""

from __future__ import annotations

import click

from paystream_cli.common import fail


@click.command()
@click.option("--host", default=None, help="Listen address [PAYSTREAM_SANDBOX_HOST, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port [PAYSTREAM_SANDBOX_PORT, 8002]")
def sandbox(host: str | None, port: int | None) -> None:
    """Run the provider sandbox (Stripe, JSONPay, SOAPBank emulation + /_sandbox admin)."""
    from pydantic import ValidationError

    from paystream_sandbox.main import run

    try:
        run(host, port)
    except ValidationError as exc:
        fail(f"invalid sandbox settings: {exc.error_count()} error(s)\n{exc}")
