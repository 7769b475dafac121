#!/usr/bin/env bash
# CI check of deploy/observability (make check-observability):
#   promtool check rules / test rules / check config on the alert rules, their unit tests
#   and the example Prometheus configuration, then the Python checks that the rules and the
#   dashboard parse and use only metrics the services declare (tests/unit).
# The running-stack check (every metric really exported) is tests/e2e/test_observability_metrics.py,
# part of `make test`.
# promtool comes from Debian's `prometheus` package: installed with apt-get when missing and
# running as root, otherwise this fails saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "promtool missing: installing Debian's prometheus package"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
	else
		echo "promtool not found: install it (Debian/Ubuntu: apt-get install prometheus," >&2
		echo "or a release from https://prometheus.io/download/) and run this again" >&2
		exit 1
	fi
fi

status=0
cd deploy/observability
promtool check rules alerts.yml || status=1
promtool test rules alerts_test.yml || status=1
promtool check config prometheus.example.yml || status=1
cd ../..

# PYTEST may be a command with arguments (the Makefile passes `uv run ... pytest`).
read -ra pytest <<<"${PYTEST:-.venv/bin/pytest}"
"${pytest[@]}" -q tests/unit/test_observability_files.py || status=1
exit "$status"
