"""`paystream worker gateway|relay|callback|reconciler`."""

from __future__ import annotations

import click

from paystream_cli.common import run_service


@click.group()
def worker() -> None:
    """Run a worker process."""


@worker.command("gateway")
def worker_gateway() -> None:
    """Route commands to payment gateways (faust; PAYSTREAM_WORKER_*, PAYSTREAM_BREAKER_*)."""
    from paystream_gateway_worker.main import run

    run_service("gateway-worker", run)


@worker.command("relay")
def worker_relay() -> None:
    """Publish the transactional outbox to Kafka."""
    from paystream_relay.main import run

    run_service("relay", run)


@worker.command("callback")
def worker_callback() -> None:
    """Apply provider callbacks to transactions (faust; PAYSTREAM_CALLBACK_WORKER_*)."""
    from paystream_provider_reports.main import run_callback_worker

    run_service("callback-worker", run_callback_worker)


@worker.command("reconciler")
def worker_reconciler() -> None:
    """Resolve pending/unknown transactions by provider lookups; expire stale actions
    (PAYSTREAM_RECONCILER_*)."""
    from paystream_provider_reports.main import run_reconciler

    run_service("reconciler", run_reconciler)
