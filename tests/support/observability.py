"""deploy/observability read by the tests: the metric names the alert rules and the dashboard
use, the documented allow-list of metrics from other exporters, and the names a /metrics
page declares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
EXTERNAL = OBSERVABILITY / "external-metrics.yml"

# PromQL words that look like metric names but are operators or modifiers.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not a function,
    an aggregation, a keyword, a label (inside {}, by/on lists) or part of a number."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in "._$":  # 1e3, 0.5e1, $__var
            continue
        if text[match.end() :].lstrip().startswith("("):  # sum(, rate(, vector(
            continue
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def rule_exprs() -> dict[str, str]:
    """alert (or record) name -> expression, over every group of alerts.yml."""
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    exprs: dict[str, str] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            exprs[rule.get("alert") or rule["record"]] = str(rule["expr"])
    return exprs


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panel_exprs() -> dict[str, list[str]]:
    """panel title -> its targets' expressions (rows hold none)."""
    exprs: dict[str, list[str]] = {}
    for panel in dashboard()["panels"]:
        targets = [str(t["expr"]) for t in panel.get("targets", [])]
        if targets:
            exprs.setdefault(panel["title"], []).extend(targets)
    return exprs


def used_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used ("rule X", "panel Y")."""
    used: dict[str, set[str]] = {}
    for alert, expr in rule_exprs().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"rule {alert}")
    for title, exprs in panel_exprs().items():
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(f"panel {title!r}")
    return used


def external_metrics() -> dict[str, dict[str, str]]:
    """The allow-list: metric -> {exporter, why}, for metrics no paystream process exports."""
    doc: dict[str, dict[str, str]] = yaml.safe_load(EXTERNAL.read_text())
    return doc


def declared(exposition: str) -> tuple[set[str], set[str]]:
    """(every name a /metrics page declares or samples, the histogram families among them).
    A labelled family with no sample yet still has its # TYPE line."""
    names: set[str] = set()
    histograms: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, histograms


def undeclared(used: set[str], names: set[str], histograms: set[str]) -> set[str]:
    """The used names no page declares (x_bucket/_sum/_count of a declared histogram x is)."""

    def known(name: str) -> bool:
        if name in names:
            return True
        return any(name.endswith(p) and name[: -len(p)] in histograms for p in _HISTOGRAM_PARTS)

    return {name for name in used if not known(name)}
