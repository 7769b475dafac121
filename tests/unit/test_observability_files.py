"""deploy/observability: the alert rules and the dashboard parse, say what they should, and
use only metrics the services declare (or the documented external ones). promtool's own
checks run here when it is installed; `make check-observability` runs them always."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from paystream_callback_ingress.metrics import IngressMetrics
from paystream_gateway_worker.metrics import WorkerMetrics
from paystream_gateway_worker.routing_state import RoutingState
from paystream_gateway_worker.settings import GatewayWorkerSettings
from paystream_ingest_api.metrics import IngestMetrics
from paystream_provider_reports.metrics import CallbackMetrics
from tests.support.observability import (
    OBSERVABILITY,
    RULES,
    dashboard,
    declared,
    external_metrics,
    metric_names,
    rule_exprs,
    undeclared,
    used_metrics,
)


def _registries() -> list[CollectorRegistry]:
    worker = WorkerMetrics()
    # The routing metrics live with the routing state, on the worker's registry.
    settings = GatewayWorkerSettings(database_url="postgresql://x@h/d", kafka_bootstrap="h:1")
    RoutingState(settings, worker.registry)
    return [
        IngestMetrics().registry,
        IngressMetrics().registry,
        worker.registry,
        CallbackMetrics().registry,
    ]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route!~"/x|y"}'
        "[$__rate_interval]))) > 1e3 and on (job) b offset 5m unless ignoring (i) c:rec"
        ' or vector(0) + count(d{e="f(g)"}) - time()'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b", "c:rec", "d"}


def test_every_rule_has_a_severity_and_a_summary() -> None:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    alerts = [rule for group in doc["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_the_rules_cover_what_the_issue_asks() -> None:
    """Consumer lag, breaker open, dead-letter rate, oldest pending/unknown per gateway,
    outbox backlog age, 5xx rate, stalled worker: each has a rule."""
    exprs = rule_exprs()

    def rules_using(fragment: str) -> list[str]:
        return [name for name, expr in exprs.items() if fragment in expr]

    for fragment in (
        "kafka_consumergroup_lag",
        'paystream_gateway_breaker_state{state="open"}',
        "paystream_routing_demoted",
        "paystream_worker_dead_letters_total",
        "paystream_callback_worker_dead_letters_total",
        'paystream_transactions_waiting_oldest_age_seconds{status="pending"}',
        'paystream_transactions_waiting_oldest_age_seconds{status="unknown"}',
        "paystream_outbox_oldest_unpublished_age_seconds",
        'paystream_ingest_requests_total{status=~"5..',
        'paystream_callback_requests_total{status=~"5..',
        "paystream_worker_in_flight",
        "paystream_callback_worker_in_flight",
    ):
        assert rules_using(fragment), f"no rule uses {fragment}"


def test_the_dashboard_is_grafana_json_over_the_datasource_variable() -> None:
    doc = dashboard()
    assert doc["uid"]
    assert doc["title"]
    assert doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    graphs = [panel for panel in doc["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert metric_names(target["expr"]), (panel["title"], target["expr"])
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]


def test_every_metric_used_is_declared_by_a_service_or_documented_as_external() -> None:
    """The e2e test checks the same on a running stack; this one needs no stack, so a
    misspelt name fails in seconds."""
    names: set[str] = set()
    histograms: set[str] = set()
    for registry in _registries():
        n, h = declared(generate_latest(registry).decode())
        names |= n
        histograms |= h
    used = used_metrics()
    external = external_metrics()
    missing = undeclared(set(used) - set(external), names, histograms)
    assert not missing, {name: sorted(used[name]) for name in missing}


def test_the_external_allow_list_is_documented_and_used() -> None:
    external = external_metrics()
    used = used_metrics()
    for name, entry in external.items():
        assert entry["exporter"], name
        assert entry["why"], name
        assert name in used, f"{name} is allowed as external but nothing uses it"
        assert not name.startswith("paystream_"), f"{name} would be ours: export it instead"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
        ("check", "config", "prometheus.example.yml"),
    ],
)
def test_promtool_accepts_the_rules_their_tests_and_the_example_config(
    args: tuple[str, ...],
) -> None:
    # Only Python and make are needed for `make test`; where promtool is missing (it is a
    # Debian package) `make check-observability` installs it and runs these, so CI always does.
    if shutil.which("promtool") is None:
        assert (OBSERVABILITY.parents[1] / "scripts" / "check_observability.sh").exists()
        return
    result = _promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
