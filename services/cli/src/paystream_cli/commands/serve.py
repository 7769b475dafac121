"""`paystream serve ingest-api|callback-ingress`."""

from __future__ import annotations

import click

from paystream_cli.common import run_service


@click.group()
def serve() -> None:
    """Run an HTTP service."""


@serve.command("ingest-api")
def serve_ingest_api() -> None:
    """Deposits and withdrawals over HTTP, published to Kafka (PAYSTREAM_INGEST_*)."""
    from paystream_ingest_api.main import run

    run_service("ingest-api", run)


@serve.command("callback-ingress")
def serve_callback_ingress() -> None:
    """Provider callbacks over HTTP, verified and published to Kafka (PAYSTREAM_CALLBACK_*)."""
    from paystream_callback_ingress.main import run

    run_service("callback-ingress", run)
