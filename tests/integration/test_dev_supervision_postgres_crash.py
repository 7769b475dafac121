"""`paystream dev` survives a `kill -9` of its embedded postmaster under load: dev reaps it,
restarts it on the same data directory and port, stays up itself (and so does the
in-memory broker), and the ingest API takes deposits again that reach a terminal status.

And it stops, loudly, when its in-memory broker dies instead.

End to end: a real `paystream dev` per test (about 60 s and 30 s). Whether services answer
503 while the database is away is tests/e2e/test_database_outage.py's business; this only
asserts the recovery.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.stack import TERMINAL, Stack, running_stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


def _postmaster_pid(stack: Stack) -> int | None:
    try:
        return int((stack.home / "pg" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None


def _live_child_pids(stack: Stack) -> set[int]:
    pids: set[int] = set()
    for child in psutil.Process(stack.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.Error:  # exited while we looked
            continue
    return pids


def _zombie_children(stack: Stack) -> list[int]:
    zombies: list[int] = []
    for child in psutil.Process(stack.process.pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.Error:
            continue
    return zombies


class Load:
    """Deposits posted back to back while the database goes away; answers are counted,
    not asserted (during the outage they may be 503s or refused connections)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(base_url=self.stack.env["PAYSTREAM_API_URL"], timeout=10) as client:
            i = 0
            while not self.stop.wait(0.05):
                body = {
                    "account_id": f"crash-{i % 20}",
                    "country": "DE",
                    "amount": "5.00",
                    "currency": "EUR",
                    "payment_method": "pm_card_visa",
                }
                headers = {**self.stack.auth, "Idempotency-Key": f"crash-load-{i}"}
                try:
                    answer = client.post("/v1/deposits", json=body, headers=headers)
                    self.answers[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    self.answers[type(exc).__name__] += 1
                i += 1


def _deposit_once_accepted(stack: Stack, key: str) -> uuid.UUID | None:
    """POST one deposit (same key every time, so retries are one deposit); its id on 202."""
    body = {
        "account_id": "after-crash",
        "country": "DE",
        "amount": "12.34",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
    }
    try:
        answer = stack.client.post(
            "/v1/deposits", json=body, headers={**stack.auth, "Idempotency-Key": key}, timeout=10
        )
    except httpx.HTTPError:
        return None
    if answer.status_code != 202:
        return None
    return uuid.UUID(answer.json()["transaction_id"])


@pytest.fixture
def base() -> Iterator[Path]:
    """Not pytest's tmp_path: as root PostgreSQL runs as another user that needs o+x on
    every parent of its data directory, and each pytest start resets /tmp/pytest-of-root
    to 0700 (a concurrent run would break the server mid-test)."""
    path = Path(tempfile.mkdtemp(prefix="paystream-dev-pg-crash-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_dev_restarts_its_killed_postgres_and_serves_again(base: Path) -> None:
    with running_stack(base) as stack:
        dev_log = base / "dev.log"
        before = stack.deposit("DE", account="before-crash")
        stack.wait_status(before, TERMINAL)
        kafka_pid = stack.service_pid("tansu")
        postmaster = _postmaster_pid(stack)
        assert postmaster is not None
        assert postmaster in _live_child_pids(stack)  # dev's own child

        load = Load(stack)
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()
        try:
            wait_for(lambda: load.answers["202"] >= 20, timeout=60, what="load flowing")
            os.kill(postmaster, signal.SIGKILL)

            def restarted() -> int | None:
                pid = _postmaster_pid(stack)
                live = _live_child_pids(stack)
                return pid if pid is not None and pid != postmaster and pid in live else None

            new_postmaster = wait_for(restarted, timeout=90, interval=0.2, what="new postmaster")
            key = f"after-crash-{uuid.uuid4()}"
            txn = wait_for(
                lambda: _deposit_once_accepted(stack, key),
                timeout=120,
                interval=0.5,
                what="a deposit accepted after the restart",
            )
        finally:
            load.stop.set()
            loader.join(30)
        stack.wait_status(txn, TERMINAL, timeout=120)

        assert stack.process.poll() is None, dev_log.read_text()[-3000:]
        assert postmaster not in _zombie_children(stack)  # reaped by dev
        assert not psutil.pid_exists(postmaster) or postmaster == new_postmaster
        assert stack.service_pid("tansu") == kafka_pid  # the broker, and what it held, lived
        snapshot = stack.snapshot(before)
        assert snapshot is not None
        assert snapshot["status"] in TERMINAL  # committed before the crash, still there
        log_text = dev_log.read_text()
        assert "postgresql exited with -9" in log_text
        assert "stale postmaster.pid" in log_text
        print(f"\nload during the crash: {dict(load.answers)}")
        print("\n".join(line for line in log_text.splitlines() if "dev_stack:" in line))


def test_dev_stops_loudly_when_its_in_memory_broker_dies(base: Path) -> None:
    """Not restarted: an empty broker would silently drop what the old one held."""
    with running_stack(base) as stack:
        family = psutil.Process(stack.process.pid).children(recursive=True)
        os.kill(stack.service_pid("tansu"), signal.SIGKILL)
        code = wait_for(stack.process.poll, timeout=60, what="dev to stop")
        assert code == 1
        output = (base / "dev.log").read_text()
        assert "the embedded Kafka broker (tansu) died" in output
        assert "Stopping the stack" in output
        _gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"left running: {alive}"
