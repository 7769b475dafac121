"""`paystream bench relay|ingest|worker|e2e`: the options; each run is in its `bench_*` module."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from paystream_cli import logs
from paystream_cli.common import fail


@click.group()
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


@bench.command("e2e")
@click.option(
    "--rate",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Requests/s offered, open loop (with --find-max: the first step).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Load duration of a run or step.  [default: 10; 30 with --find-max]",
)
@click.option(
    "--attach",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PAYSTREAM_BENCH_ATTACH",
    metavar="ENVFILE",
    help="Measure a running stack from its dev.env instead of starting a private one.",
)
@click.option(
    "--env",
    "extra_env",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra environment for the private stack and extra workers (repeatable),"
    " e.g. PAYSTREAM_WORKER_CONCURRENCY=64.",
)
@click.option(
    "--gateway-workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Extra `paystream worker gateway` processes in the same consumer group.",
)
@click.option(
    "--withdrawals",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    metavar="FRACTION",
    help="Share of requests that are withdrawals from funded accounts.",
)
@click.option(
    "--drain-s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="After the load, how long accepted requests may take to reach a terminal outcome"
    " before they count as lost.",
)
@click.option(
    "--idle-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Idle CPU measurement before the load.",
)
@click.option(
    "--find-max",
    is_flag=True,
    help="Raise the rate step by step until end-to-end p99, completion rate or loss fails.",
)
@click.option(
    "--step-factor",
    default=1.5,
    show_default=True,
    type=click.FloatRange(min=1, min_open=True),
    help="--find-max: rate multiplier per step.",
)
@click.option(
    "--max-p99-ms",
    default=1000.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="--find-max: end-to-end p99 a step may have.",
)
@click.option(
    "--max-requests",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Total requests (the embedded broker keeps every record in memory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document with all figures.")
def bench_e2e(
    rate: float,
    seconds: float | None,
    attach: Path | None,
    extra_env: tuple[str, ...],
    gateway_workers: int,
    withdrawals: float,
    drain_s: float,
    idle_s: float,
    find_max: bool,
    step_factor: float,
    max_p99_ms: float,
    max_requests: int,
    as_json: bool,
) -> None:
    """End to end: POST -> terminal outcome event throughput, latency and CPU per payment.

    Open-loop HTTP load on the ingest API of a private `paystream dev` stack (or --attach),
    latency to each transaction's terminal outcome on the outcomes topic, and CPU time of
    every process (services, sandbox, broker, PostgreSQL, load generator) per payment.
    Exit code 1 if an accepted request got no terminal outcome within --drain-s or nothing
    was accepted.
    """
    from paystream_cli import bench_e2e as bench_module

    logs.setup("bench")
    try:
        env = bench_module.parse_env(extra_env)
    except ValueError as exc:
        fail(str(exc))
    seconds = seconds or (30.0 if find_max else 10.0)
    if not find_max and round(rate * seconds) > max_requests:
        fail(f"--rate x --seconds is more than --max-requests ({max_requests})")
    options = bench_module.Options(
        rate=rate,
        seconds=seconds,
        attach=attach,
        extra_env=env,
        gateway_workers=gateway_workers,
        withdrawals=withdrawals,
        drain_s=drain_s,
        idle_s=idle_s,
        find_max=find_max,
        step_factor=step_factor,
        max_p99_ms=max_p99_ms,
        max_requests=max_requests,
        as_json=as_json,
    )
    sys.exit(bench_module.run(options))
