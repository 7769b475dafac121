"""`paystream routes` against a running `paystream dev` stack: the next deposit follows the
change in the worker that is already running (same process, no restart), a disabled last
route rejects, enabling brings it back, and the history says who and when."""

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

from tests.e2e.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

WORKER = "worker gateway"  # the gateway worker's command line in `paystream dev`


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


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
    [change] = history(stack, "--country", "DE")
    assert change["actor"] == "e2e-alice"
    assert change["action"] == "set"
    assert started <= datetime.fromisoformat(change["changed_at"]) <= datetime.now(UTC)
    assert [r["gateway"] for r in change["before"]] == ["stripe", "jsonpay", "soapbank"]
    assert [r["gateway"] for r in change["after"]] == ["jsonpay", "stripe", "soapbank"]


def test_disabling_the_only_route_rejects_and_enabling_brings_it_back(stack: Stack) -> None:
    worker = stack.service_pid(WORKER)
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
    assert [(c["action"], c["gateway"], c["actor"]) for c in history(stack, "--country", "NG")] == [
        ("enable", "soapbank", getpass.getuser()),
        ("disable", "soapbank", getpass.getuser()),
        ("set", None, getpass.getuser()),
    ]
