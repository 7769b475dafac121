"""One `paystream dev` stack shared by the e2e modules that need nothing but its defaults
(and a gateway worker health port), instead of one stack per module: each start costs
20-25 s of the suite's time budget.

A module takes it through the module-scoped `shared_stack` fixture, which hands it back as
it found it, or says what the module left behind:

- the sandbox's fault controls, per provider, are put back to what they were when the stack
  started (on entry too, so one module's leftover cannot fail the next);
- every circuit breaker is left closed with no failure counted: breakers are shared by the
  workers through the gateway-health topic and outlive a module, so a module that trips
  one (or leaves failures counted, which a single later failure would turn into an open
  breaker) would change where the next module's payments go. A gateway that is not is sent
  deposits (where it is priority 1) until a call there succeeds, which resets it;
- routes are the same as on entry (a module that changes them restores them itself; this
  only checks it did).

What the modules share otherwise, and why it is harmless, is said in each module: rows of
other modules' transactions, dead letters (every module filters by its own record keys),
tenants. Routing by health cannot move a payment here: demotion needs 50 final attempts
of one gateway, country and type in 5 minutes with fewer than half succeeding, and these
modules together decline a handful (see paystream_config.routing).

The modules on the shared stack run one after the other, at the place of the first of
them (pytest_collection_modifyitems), and the stack stops after the last of them
(pytest_runtest_teardown), so it never idles beside another module's stack.

`observed_stack` is a second stack shared the same way, by the modules that need settings
of their own which change nothing for the others: tracing on (every span in one file),
every worker's /metrics port open, the reconciler's rounds and audit every second. Its
modules read their own payments and traces, and the metrics; none changes faults,
breakers or routes. test_audit.py runs last on it (marked `stack_last`): it kills the
gateway worker (a killed writer may leave a half-written line in the span file) and
leaves an outcome event deleted. test_routing_health.py keeps a stack of its own: its
short health window (20 s) leaves no room for the CPU the observed stack's settings take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.route_commands import route_table
from tests.e2e.stack import TERMINAL, Stack, running_stack
from tests.support.asgi_server import free_port
from tests.support.polling import wait_for

PROVIDERS = ("stripe", "json", "soap")  # the sandbox's providers (paystream_sandbox.core)
# The observed stack's worker web ports, by the process that serves /metrics on it.
OBSERVED_WEB_PORTS = {
    "gateway worker": "PAYSTREAM_WORKER_WEB_PORT",
    "callback worker": "PAYSTREAM_CALLBACK_WORKER_WEB_PORT",
    "reconciler": "PAYSTREAM_RECONCILER_WEB_PORT",
}
TRACE_FILE = "PAYSTREAM_TRACE_FILE"
LAST = "stack_last"  # the marker of a module that runs last on its shared stack


@dataclass(frozen=True)
class StackKind:
    """A stack several modules share; they take it through the module fixture `fixture`."""

    fixture: str
    settings: Callable[[Path], dict[str, str]]  # for running_stack; given the stack's tmp


def _shared_settings(_tmp: Path) -> dict[str, str]:
    return {"PAYSTREAM_WORKER_WEB_PORT": str(free_port())}  # the worker's /healthz, /metrics


def _observed_settings(tmp: Path) -> dict[str, str]:
    return {
        TRACE_FILE: str(tmp / "spans.jsonl"),  # JSON lines, appended by every process
        **{setting: str(free_port()) for setting in OBSERVED_WEB_PORTS.values()},
        # The reconciler's backlog and audit gauges get values within a second, not minutes.
        "PAYSTREAM_RECONCILER_INTERVAL_S": "1",
        "PAYSTREAM_RECONCILER_AUDIT_INTERVAL_S": "1",
    }


SHARED = StackKind("shared_stack", _shared_settings)
OBSERVED = StackKind("observed_stack", _observed_settings)
KINDS = (SHARED, OBSERVED)


class _Holder:
    """A shared stack, started by its first user and stopped after its last."""

    def __init__(self, kind: StackKind) -> None:
        self.kind = kind
        self.stack: Stack | None = None
        self.faults: dict[str, dict[str, Any]] = {}
        self.users: set[str] = set()  # node ids of the tests still to run on it
        self.failed: str | None = None
        self._exit = ExitStack()

    def start(self, tmp_path_factory: pytest.TempPathFactory) -> Stack:
        # One attempt per session, as a session fixture's: every later module fails at once
        # instead of waiting for a start that failed before.
        assert self.failed is None, f"{self.kind.fixture} did not start: {self.failed}"
        if self.stack is None:
            tmp = tmp_path_factory.mktemp(self.kind.fixture.replace("_", "-"))
            try:
                self.stack = self._exit.enter_context(running_stack(tmp, **self.kind.settings(tmp)))
                self.faults = {p: _faults(self.stack, p) for p in PROVIDERS}
            except BaseException as exc:
                self.failed = repr(exc)[:500]
                self.close()
                raise
        return self.stack

    def close(self) -> None:
        self._exit.close()


_HOLDERS = pytest.StashKey[dict[str, _Holder]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_HOLDERS] = {kind.fixture: _Holder(kind) for kind in KINDS}
    config.addinivalue_line(
        "markers",
        f"{LAST}: the module runs after the others on its shared stack (it breaks something)",
    )


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _takes(item: pytest.Item, kind: StackKind) -> bool:
    return kind.fixture in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For each shared stack, whole modules on it moved together, to where the first of
    them was, those marked `stack_last` after the others; everything else keeps its order."""
    for kind in KINDS:
        modules = {_module_of(i) for i in items if _takes(i, kind)}
        users = [i for i in items if _module_of(i) in modules]
        if not users:
            continue
        first = items.index(users[0])  # every item before it stays where it is
        users.sort(key=lambda i: i.get_closest_marker(LAST) is not None)  # a stable sort
        others = [i for i in items if _module_of(i) not in modules]
        items[:] = others[:first] + users + others[first:]


def pytest_collection_finish(session: pytest.Session) -> None:
    taking_both = {i.nodeid for i in session.items if all(_takes(i, k) for k in KINDS)}
    assert not taking_both, f"one shared stack per test: {sorted(taking_both)}"
    for holder in session.config.stash[_HOLDERS].values():
        holder.users = {i.nodeid for i in session.items if _takes(i, holder.kind)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # After the item's own teardown, which finalizes its module's fixtures when it was the
    # module's last test: the last user hands the stack back before it stops.
    try:
        return (yield)
    finally:
        for holder in item.config.stash[_HOLDERS].values():
            if item.nodeid in holder.users:
                holder.users.discard(item.nodeid)
                if not holder.users:
                    holder.close()


@pytest.fixture(scope="session")
def _holders(request: pytest.FixtureRequest) -> Iterator[dict[str, _Holder]]:
    holders = request.config.stash[_HOLDERS]
    yield holders
    for holder in holders.values():
        holder.close()  # when the session ends early (-x, an interrupt); idempotent


@pytest.fixture(scope="module")
def shared_stack(
    _holders: dict[str, _Holder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    holder = _holders[SHARED.fixture]
    stack = holder.start(tmp_path_factory)
    _restore_faults(stack, holder.faults)
    routes = route_table(stack)
    yield stack
    _restore_faults(stack, holder.faults)
    settle_breakers(stack)
    assert route_table(stack) == routes, "the module left the routes changed"


@pytest.fixture(scope="module")
def observed_stack(_holders: dict[str, _Holder], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return _holders[OBSERVED.fixture].start(tmp_path_factory)


def _faults(stack: Stack, provider: str) -> dict[str, Any]:
    response = stack.sandbox.get(f"/faults/{provider}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _restore_faults(stack: Stack, faults: dict[str, dict[str, Any]]) -> None:
    for provider, body in faults.items():
        stack.sandbox.put(f"/faults/{provider}", json=body).raise_for_status()


def breakers(stack: Stack) -> dict[str, dict[str, Any]]:
    """The shared breaker view, as the gateway worker's /healthz shows it."""
    url = f"http://127.0.0.1:{stack.env_port('PAYSTREAM_WORKER_WEB_PORT')}/healthz"

    def body() -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = httpx.get(url, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None
        return found

    view: dict[str, dict[str, Any]] = wait_for(body, timeout=60, what="worker /healthz")["breakers"]
    return view


def _unsettled(stack: Stack) -> list[str]:
    return sorted(
        gateway
        for gateway, entry in breakers(stack).items()
        if entry.get("state") != "closed" or entry.get("failures", 0) != 0
    )


def settle_breakers(stack: Stack) -> None:
    """Every breaker closed with no failure counted. A breaker resets on a successful call
    (an open one after its reset timeout, by a probe), so send deposits where the gateway
    comes first until one succeeds there."""

    first_in = {route[0]: country for country, route in DEPOSIT_ROUTES.items()}

    def settled() -> bool:
        left = _unsettled(stack)
        for gateway in left:
            assert gateway in first_in, f"no demo country routes deposits to {gateway} first"
            stack.wait_status(stack.deposit(first_in[gateway]), TERMINAL)
        return not left

    wait_for(settled, timeout=90, interval=0.5, what="every breaker closed, no failures")
