"""`paystream routes` against a running `paystream dev` stack: the next deposit follows the
change in the worker that is already running (same process, no restart), a disabled last
route rejects, enabling brings it back, and the history says who and when.

On the shared stack (tests/e2e/conftest.py): the routes it changes are put back as they
were when it ends (other modules route by the demo routes), and the history it reads is
of the changes made since each test began."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.route_commands import restore_routes, route_table, routes
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

WORKER = "worker gateway"  # the gateway worker's command line in `paystream dev`


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Iterator[Stack]:
    before = route_table(shared_stack)
    yield shared_stack
    restore_routes(shared_stack, before)


def since(changes: list[dict[str, Any]], started: datetime) -> list[dict[str, Any]]:
    """The changes made at or after `started` (the stack may have routed before)."""
    return [c for c in changes if datetime.fromisoformat(c["changed_at"]) >= started]


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
