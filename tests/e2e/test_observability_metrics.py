"""Every metric an alert rule or a dashboard panel of deploy/observability uses is exported
by a running dev stack (or listed in external-metrics.yml with the exporter that provides
it): the ingest API, the callback ingress, and the gateway worker, callback worker and
reconciler on their web ports. On the observed stack (tests/e2e/conftest.py), which opens
those ports and runs the reconciler's rounds every second; its only payment is its own."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import OBSERVED_WEB_PORTS
from tests.e2e.stack import Stack
from tests.support.observability import declared, external_metrics, undeclared, used_metrics
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(observed_stack: Stack) -> Stack:
    return observed_stack


def _urls(stack: Stack) -> dict[str, str]:
    urls = {
        "ingest API": stack.env["PAYSTREAM_API_URL"] + "/metrics",
        "callback ingress": stack.env["PAYSTREAM_CALLBACK_URL"] + "/metrics",
    }
    for name, setting in OBSERVED_WEB_PORTS.items():
        urls[name] = f"http://127.0.0.1:{stack.env_port(setting)}/metrics"
    return urls


def _scrape(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.TransportError:  # a worker serves /metrics once its dependencies are up
        return None
    return response.text if response.status_code == 200 else None


def _sample(page: str, name: str) -> float | None:
    """The first sample of `name` on a /metrics page (any labels)."""
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", page, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(
    stack: Stack, tmp_path: Path
) -> None:
    # One deposit through the ingest API and the gateway worker, so their labelled counters
    # have samples, not just declarations (a declared family, # TYPE without a sample, is
    # enough for the check below: a counter per dead-letter reason has none until one).
    txn = stack.deposit("DE")
    assert stack.wait_status(txn, {"succeeded", "failed"})["status"] == "succeeded"

    pages: dict[str, str] = {}
    for name, url in _urls(stack).items():

        def page(url: str = url) -> str | None:
            return _scrape(url)

        pages[name] = wait_for(page, timeout=60, what=f"{name} {url}")

    # The reconciler reads the backlog and runs the audit as the app role (migration 0012's
    # and 0011's functions): wait until it has done both once.
    def reconciler_reported() -> str | None:
        page = _scrape(_urls(stack)["reconciler"])
        if page is None:
            return None
        backlog = _sample(page, "paystream_backlog_last_success_timestamp_seconds") or 0
        audit = _sample(page, "paystream_audit_last_success_timestamp_seconds") or 0
        return page if backlog > 0 and audit > 0 else None

    pages["reconciler"] = wait_for(reconciler_reported, timeout=30, what="reconciler gauges")
    for name, text in pages.items():
        (tmp_path / f"{name.replace(' ', '-')}.prom").write_text(text)  # to read on failure

    names: set[str] = set()
    histograms: set[str] = set()
    for text in pages.values():
        n, h = declared(text)
        names |= n
        histograms |= h
    used = used_metrics()
    external = external_metrics()
    missing = undeclared(set(used) - set(external), names, histograms)
    assert not missing, {name: sorted(used[name]) for name in sorted(missing)}
    # An allowed external name must really come from elsewhere.
    assert not set(external) & names, "an external metric is exported by paystream: drop it"

    # The deposit's hops counted it: the names are real series, not only declarations.
    assert (_sample(pages["ingest API"], "paystream_ingest_commands_published_total") or 0) >= 1
    assert _sample(pages["gateway worker"], "paystream_worker_commands_total") is not None
    assert _sample(pages["gateway worker"], "paystream_worker_breaker_open") == 0
    assert _sample(pages["gateway worker"], "paystream_worker_in_flight") is not None
    assert (
        _sample(pages["reconciler"], "paystream_outbox_oldest_unpublished_age_seconds") is not None
    )
    assert _sample(pages["reconciler"], "paystream_audit_violations") == 0
