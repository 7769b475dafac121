"""PostgreSQL dies under load, for 10 s and then for 60 s: the stack stays up, clients get
503 + Retry-After (never a 500) while it is away, and once it is back every accepted
payment reaches one terminal status with the books exact.

The database is the test's own (an embedded server handed to `paystream dev` as
PAYSTREAM_DATABASE_URL), so the test decides how long it stays down; `paystream dev`'s own
restart of its embedded server is tested in tests/integration/test_dev_supervision*.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from paystream_devinfra import EmbeddedPostgres
from tests.e2e.stack import CURRENCY, TERMINAL, Stack, running_stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

RATE = 20.0  # deposits offered per second while the test runs
OUTAGES_S = (10.0, 60.0)
PENDING_SHARE = 5  # every 5th deposit is settled by a provider callback
SERVICES = (
    "serve ingest-api",
    "serve callback-ingress",
    "worker gateway",
    "worker callback",
    "worker reconciler",
    "worker relay",
)


@dataclass
class Load:
    """Deposits offered at RATE by a client that retries a 503 with the same key, as the
    API asks: a 503 means nothing was done."""

    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, uuid.UUID] = field(default_factory=dict)  # key -> transaction
    retry: dict[str, dict[str, object]] = field(default_factory=dict)  # key -> body
    answers: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def run(self) -> None:
        countries = list(DEPOSIT_ROUTES)
        with httpx.Client(base_url=self.stack.env["PAYSTREAM_API_URL"], timeout=30) as client:
            started = time.monotonic()
            i = 0
            while not self.stop.is_set():
                ahead = started + i / RATE - time.monotonic()
                if ahead > 0 and self.stop.wait(ahead):  # pacing the schedule
                    break
                country = countries[i % len(countries)]
                body: dict[str, object] = {
                    "account_id": f"outage-{i % 40}",
                    "country": country,
                    "amount": "10.00",
                    "currency": CURRENCY[country],
                    "payment_method": "pm_card_visa",
                }
                if i % PENDING_SHARE == 0:
                    body["metadata"] = {"sandbox_scenario": "pending"}
                self.post(client, f"outage-{i}", body)
                i += 1

    def post(self, client: httpx.Client, key: str, body: dict[str, object]) -> bool:
        headers = {**self.stack.auth, "Idempotency-Key": key}
        try:
            answer = client.post("/v1/deposits", json=body, headers=headers)
        except httpx.HTTPError as exc:  # the API itself must stay up: count it, fail later
            self.unexpected.append(f"{key}: {type(exc).__name__}")
            self.retry[key] = body
            return False
        self.answers[answer.status_code] += 1
        if answer.status_code == 202:
            self.accepted[key] = uuid.UUID(answer.json()["transaction_id"])
            self.retry.pop(key, None)
            return True
        if answer.status_code == 503 and answer.headers.get("retry-after", "").isdigit():
            self.retry[key] = body
            return False
        self.unexpected.append(f"{key}: {answer.status_code} {answer.text[:300]}")
        return False

    def drain(self) -> None:
        """Send what was refused during the outages again, until all are accepted."""
        with httpx.Client(base_url=self.stack.env["PAYSTREAM_API_URL"], timeout=30) as client:

            def all_in() -> bool:
                for key, body in list(self.retry.items()):
                    self.post(client, key, body)
                return not self.retry

            wait_for(all_in, timeout=120, interval=0.5, what="refused deposits accepted")


@pytest.fixture(scope="module")
def database() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's tmp_path: as root the server runs as another user (see conftest).
    base = Path(tempfile.mkdtemp(prefix="paystream-outage-pg-"))
    try:
        with EmbeddedPostgres(base / "data", database="paystream", fsync=False) as pg:
            yield pg
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database: EmbeddedPostgres) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("outage"),
        PAYSTREAM_DATABASE_URL=database.url,
        PAYSTREAM_RECONCILER_INTERVAL_S="2",
        # Lookups that failed during the outage are retried within seconds, not minutes.
        PAYSTREAM_RECONCILER_BACKOFF_BASE_S="1",
        PAYSTREAM_RECONCILER_BACKOFF_MAX_S="5",
    ) as s:
        yield s


def _pids(stack: Stack) -> dict[str, int]:
    return {name: stack.service_pid(name) for name in SERVICES}


def _not_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 503
    except httpx.HTTPError:
        return False


def test_the_stack_rides_out_database_outages(stack: Stack, database: EmbeddedPostgres) -> None:
    pids = _pids(stack)
    load = Load(stack)
    loader = threading.Thread(target=load.run, daemon=True)
    loader.start()
    try:
        for outage_s in OUTAGES_S:
            wait_for(lambda: len(load.accepted) >= 40, timeout=60, what="deposits flowing")
            before = sum(load.answers.values())
            assert database.pid is not None
            os.kill(database.pid, signal.SIGKILL)  # the postmaster only, as a crash would
            down_at = time.monotonic()
            wait_for(
                lambda: _not_ready(stack.env["PAYSTREAM_CALLBACK_URL"]),
                timeout=outage_s,
                what="the callback ingress reporting not ready",
            )
            wait_for(lambda: load.answers[503] > 0, timeout=outage_s, what="a 503")
            # The outage lasts outage_s whatever happens meanwhile: this wait is the fault.
            load.stop.wait(max(0.0, outage_s - (time.monotonic() - down_at)))
            report = database.restart()
            print(f"\noutage of {outage_s:.0f}s: {report.describe()}")
            assert sum(load.answers.values()) > before, "the API stopped answering"
            accepted_at_restart = len(load.accepted)
            wait_for(
                lambda n=accepted_at_restart: len(load.accepted) >= n + 40,  # type: ignore[misc]
                timeout=60,
                what="deposits accepted again",
            )
    finally:
        load.stop.set()
        loader.join(30)
    load.drain()
    assert load.unexpected == [], load.unexpected[:10]
    assert set(load.answers) <= {202, 503}, load.answers
    assert load.answers[503] > 0

    txns = set(load.accepted.values())

    def settled() -> bool:
        rows = stack.query(
            "SELECT count(*) FROM transactions WHERE status IN"
            " ('succeeded', 'failed', 'rejected', 'unknown')"
        )
        return int(rows[0][0]) >= len(txns)

    wait_for(settled, timeout=240, interval=1, what="every accepted deposit settled")
    statuses = Counter(s for (s,) in stack.query("SELECT status FROM transactions"))
    assert sum(statuses.values()) == len(txns), statuses
    assert set(statuses) <= TERMINAL | {"unknown"}, statuses

    terminal_events = stack.query(
        "SELECT data->>'transaction_id', count(*) FROM outbox"
        " WHERE event_type IN ('paystream.transaction.succeeded.v1',"
        " 'paystream.transaction.failed.v1', 'paystream.transaction.rejected.v1')"
        " GROUP BY 1"
    )
    assert len(terminal_events) == sum(statuses[s] for s in TERMINAL)
    assert all(count == 1 for _, count in terminal_events)
    mismatches = stack.query(
        "SELECT b.account_id FROM balances b JOIN (SELECT account_id, currency,"
        " sum(amount_minor) AS total FROM transactions WHERE status = 'succeeded'"
        " GROUP BY 1, 2) t USING (account_id, currency) WHERE b.available_minor <> t.total"
    )
    assert mismatches == []
    # Stayed up: no service crashed and was restarted by `paystream dev`.
    assert stack.process.poll() is None
    assert _pids(stack) == pids
    print(f"\noutages {OUTAGES_S}: answers {dict(load.answers)}, statuses {dict(statuses)}")
