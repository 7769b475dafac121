"""`paystream routes` against a running `paystream dev` stack: the next deposit follows the
change in the worker that is already running (same process, no restart), a disabled last
route rejects, enabling brings it back, and the history says who and when.

On the shared stack (tests/e2e/conftest.py): the routes it changes are put back as they
were when it ends (other modules route by the demo routes), and the history it reads is
of the changes made since each test began."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import route_table
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

WORKER = "worker gateway"  # the gateway worker's command line in `paystream dev`


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Iterator[Stack]:
    before = route_table(shared_stack)
    yield shared_stack
    restore_routes(shared_stack, before)


def restore_routes(stack: Stack, table: list[tuple[Any, ...]]) -> None:
    """The routes of `table` (see route_table) back, with the operator's commands: each
    country and type that differs is set again (its levels, weights), then switched."""
    wanted: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in table:
        wanted.setdefault((row[0], row[1]), []).append(row)
    now = route_table(stack)
    for (country, kind), rows in wanted.items():
        if [r for r in now if (r[0], r[1]) == (country, kind)] == rows:
            continue
        levels: dict[int, list[str]] = {}
        for _, _, gateway, priority, _, weight in rows:
            levels.setdefault(priority, []).append(f"{gateway}:{weight}")
        args = [",".join(levels[p]) for p in sorted(levels)]
        routes(stack, "set", country, kind, *args, "--actor", "e2e-restore")
        # `set` keeps a gateway's switch, and a gateway it adds starts enabled.
        switched = {r[2]: r[4] for r in route_table(stack) if (r[0], r[1]) == (country, kind)}
        for _, _, gateway, _, enabled, _ in rows:
            if switched[gateway] != enabled:
                routes(stack, "enable" if enabled else "disable", country, kind, gateway)


def since(changes: list[dict[str, Any]], started: datetime) -> list[dict[str, Any]]:
    """The changes made at or after `started` (the stack may have routed before)."""
    return [c for c in changes if datetime.fromisoformat(c["changed_at"]) >= started]


def routes(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it beside the stack."""
    env = {**os.environ, "PAYSTREAM_DATABASE_URL": stack.env["PAYSTREAM_DATABASE_URL"]}
    done = subprocess.run(
        [sys.executable, "-m", "paystream_cli.main", "routes", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def history(stack: Stack, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(routes(stack, "history", "--json", *args).stdout)
    return found


def deposit_via(stack: Stack, country: str) -> dict[str, Any]:
    return stack.wait_status(stack.deposit(country), {"succeeded", "failed", "rejected"})


def test_set_moves_the_next_deposit_in_the_running_worker(stack: Stack) -> None:
    worker = stack.service_pid(WORKER)
    started = datetime.now(UTC)
    before = deposit_via(stack, "DE")  # the demo order: stripe, jsonpay, soapbank

    routes(stack, "set", "DE", "deposit", "jsonpay", "stripe", "soapbank", "--actor", "e2e-alice")
    after = deposit_via(stack, "DE")

    assert before["status"] == "succeeded", before
    assert [a["gateway"] for a in before["attempts"]] == ["stripe"]
    assert after["status"] == "succeeded", after
    assert [a["gateway"] for a in after["attempts"]] == ["jsonpay"], after["attempts"]
    assert after["gateway"] == "jsonpay"
    assert stack.service_pid(WORKER) == worker, "the same worker process, not a restarted one"
    [change] = since(history(stack, "--country", "DE"), started)
    assert change["actor"] == "e2e-alice"
    assert change["action"] == "set"
    assert started <= datetime.fromisoformat(change["changed_at"]) <= datetime.now(UTC)
    assert [r["gateway"] for r in change["before"]] == ["stripe", "jsonpay", "soapbank"]
    assert [r["gateway"] for r in change["after"]] == ["jsonpay", "stripe", "soapbank"]


def test_disabling_the_only_route_rejects_and_enabling_brings_it_back(stack: Stack) -> None:
    worker = stack.service_pid(WORKER)
    started = datetime.now(UTC)
    routes(stack, "set", "NG", "deposit", "soapbank")  # demo: soapbank, jsonpay

    routes(stack, "disable", "NG", "deposit", "soapbank")
    refused = deposit_via(stack, "NG")
    routes(stack, "enable", "NG", "deposit", "soapbank")
    served = deposit_via(stack, "NG")

    assert refused["status"] == "rejected", refused
    assert refused["failure"]["code"] == "no_gateway_available"
    assert refused["attempts"] == []
    assert served["status"] == "succeeded", served
    assert [a["gateway"] for a in served["attempts"]] == ["soapbank"]
    assert stack.service_pid(WORKER) == worker
    # Newest first; without --actor the OS user is recorded.
    changes = since(history(stack, "--country", "NG"), started)
    assert [(c["action"], c["gateway"], c["actor"]) for c in changes] == [
        ("enable", "soapbank", getpass.getuser()),
        ("disable", "soapbank", getpass.getuser()),
        ("set", None, getpass.getuser()),
    ]
