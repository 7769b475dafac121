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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from tests.e2e.stack import TERMINAL, Stack, running_stack
from tests.support.asgi_server import free_port
from tests.support.polling import wait_for

SHARED = "shared_stack"
PROVIDERS = ("stripe", "json", "soap")  # the sandbox's providers (paystream_sandbox.core)


class _Holder:
    """The shared stack, started by its first user and stopped after its last."""

    def __init__(self) -> None:
        self.stack: Stack | None = None
        self.faults: dict[str, dict[str, Any]] = {}
        self.users: set[str] = set()  # node ids of the tests still to run on it
        self._exit = ExitStack()

    def start(self, tmp_path_factory: pytest.TempPathFactory) -> Stack:
        if self.stack is None:
            port = str(free_port())  # the gateway worker's /healthz and /metrics
            self.stack = self._exit.enter_context(
                running_stack(
                    tmp_path_factory.mktemp("shared-stack"), PAYSTREAM_WORKER_WEB_PORT=port
                )
            )
            self.faults = {p: _faults(self.stack, p) for p in PROVIDERS}
        return self.stack

    def close(self) -> None:
        self._exit.close()


_HOLDER = pytest.StashKey[_Holder]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_HOLDER] = _Holder()


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whole modules on the shared stack moved together, to where the first of them was;
    everything else keeps its order."""
    modules = {_module_of(i) for i in items if SHARED in getattr(i, "fixturenames", ())}
    users = [i for i in items if _module_of(i) in modules]
    if not users:
        return
    first = items.index(users[0])
    others = [i for i in items if _module_of(i) not in modules]
    items[:] = others[:first] + users + others[first:]


def pytest_collection_finish(session: pytest.Session) -> None:
    holder = session.config.stash[_HOLDER]
    holder.users = {i.nodeid for i in session.items if SHARED in getattr(i, "fixturenames", ())}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # After the item's own teardown, which finalizes its module's fixtures when it was the
    # module's last test: the last user hands the stack back before it stops.
    try:
        return (yield)
    finally:
        holder = item.config.stash[_HOLDER]
        if item.nodeid in holder.users:
            holder.users.discard(item.nodeid)
            if not holder.users:
                holder.close()


@pytest.fixture(scope="session")
def _shared_stack_session(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Holder]:
    holder = request.config.stash[_HOLDER]
    holder.start(tmp_path_factory)
    yield holder
    holder.close()  # when the session ends early (-x, an interrupt); idempotent


@pytest.fixture(scope="module")
def shared_stack(_shared_stack_session: _Holder) -> Iterator[Stack]:
    holder = _shared_stack_session
    assert holder.stack is not None
    stack = holder.stack
    _restore_faults(stack, holder.faults)
    routes = route_table(stack)
    yield stack
    _restore_faults(stack, holder.faults)
    settle_breakers(stack)
    assert route_table(stack) == routes, "the module left the routes changed"


def route_table(stack: Stack) -> list[tuple[Any, ...]]:
    """Every route with its priority, switch and weight, in a stable order."""
    return stack.query(
        "SELECT country, transaction_type, gateway_code, priority, enabled, weight"
        " FROM gateway_countries ORDER BY 1, 2, 3"
    )


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
