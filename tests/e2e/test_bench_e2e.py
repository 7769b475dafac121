"""`paystream bench e2e --attach` against a running stack: the figures add up.

Speed is never asserted (it depends on the machine); what is checked is that every
accepted request is accounted for and that every figure is present and sane.

On the shared stack (tests/e2e/conftest.py): the bench waits for the outcomes of its own
requests only (read from the outcomes topic from where it ends when the bench starts), its
accounts are its own (`bench-...`), and it changes no fault, breaker or route.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

CPU_GROUPS = {
    "ingest_api",
    "gateway_worker",
    "callback_ingress",
    "callback_worker",
    "reconciler",
    "relay",
    "sandbox",
    "broker",
    "postgresql",
    "dev_supervisor",
    "load_generator",
    "paystream_services_total",
    "everything",
}


def _bench(env_file: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "paystream_cli.main",
        "bench",
        "e2e",
        "--attach",
        str(env_file),
        "--rate",
        "10",
        "--seconds",
        "4",
        "--idle-s",
        "1",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return done, report


def _ordered(latency: dict[str, Any]) -> None:
    assert None not in latency.values(), latency
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], latency


def test_attached_bench_accounts_for_every_request(shared_stack: Stack) -> None:
    stack = shared_stack
    done, report = _bench(stack.home / "dev.env")
    assert report["exit_code"] == 0
    assert report["stack"]["mode"] == "attach"
    assert report["stack"]["dev_pid"] == stack.process.pid, done.stderr
    (run,) = report["runs"]
    assert run["requests"] == 40
    assert run["accepted"] == run["requests"], run["non_202"]
    assert run["non_202"] == {}
    assert run["lost"] == 0
    assert run["terminal_total"] == run["accepted"]
    assert sum(run["terminal"].values()) == run["terminal_total"]
    assert set(run["terminal"]) <= {"succeeded", "failed", "rejected"}
    _ordered(run["post_latency_ms"])
    _ordered(run["e2e_latency_ms"])
    assert run["max_schedule_lag_ms"] >= 0
    assert set(run["cpu"]) == CPU_GROUPS
    for group, cpu in run["cpu"].items():
        for name in ("processes", "idle_processes", "idle_percent_core", "percent_core"):
            assert cpu[name] >= 0, (group, cpu)
        assert cpu["cpu_ms"] >= 0, (group, cpu)
        assert cpu["ms_per_payment"] is not None, (group, cpu)
        assert cpu["ms_per_payment"] >= 0, (group, cpu)
    # The process tree was found: every stack process is attributed somewhere.
    for group in ("ingest_api", "gateway_worker", "broker", "postgresql", "load_generator"):
        assert run["cpu"][group]["processes"] >= 1, group
    everything = run["cpu"]["everything"]["cpu_ms"]
    assert everything >= run["cpu"]["paystream_services_total"]["cpu_ms"]
    # PostgreSQL's line split by the service each backend serves adds up to it, and the
    # services' sessions are named after them.
    by_client = run["postgresql_by_client"]
    assert "paystream-gateway-worker" in by_client, by_client
    assert by_client["paystream-gateway-worker"]["cpu_ms"] > 0, by_client
    split = sum(client["cpu_ms"] for client in by_client.values())
    assert split == pytest.approx(run["cpu"]["postgresql"]["cpu_ms"], abs=0.01), by_client
