# paystream: `make dev` runs the whole stack on embedded defaults, `make test` runs every test.
# Only Python 3.11+ and make are needed: uv is bootstrapped into .tools/ when not on PATH.

PYTHON ?= python3
UV_VERSION ?= 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
RUN := $(UV) run --frozen --no-sync

.DEFAULT_GOAL := help
.PHONY: help install dev test test-unit test-integration test-e2e lint typecheck fmt bench-relay clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen
	@touch $@

install: .venv/.synced ## Create .venv with every package and dev tool (uv sync --frozen)

dev: install ## Run the whole stack on embedded Kafka + PostgreSQL (paystream dev)
	$(RUN) paystream dev

test: install ## Run the whole test suite (unit, integration, e2e) on embedded defaults
	$(RUN) pytest tests

test-unit: install ## Unit tests only
	$(RUN) pytest tests/unit || [ $$? -eq 5 ]  # 5: nothing collected

test-integration: install ## Integration tests (real broker and PostgreSQL)
	$(RUN) pytest tests/integration || [ $$? -eq 5 ]  # 5: nothing collected

test-e2e: install ## End-to-end tests (paystream processes)
	$(RUN) pytest tests/e2e || [ $$? -eq 5 ]  # 5: nothing collected

lint: install ## ruff check + format --check, mypy --strict, import contracts, declared dependencies
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs services tests
	$(RUN) lint-imports
	@# deptry per package: each package declares in its own pyproject.toml what it imports.
	@status=0; for pkg in libs/* services/*; do \
		echo "deptry $$pkg"; \
		$(RUN) deptry $$pkg/src --config $$pkg/pyproject.toml || status=1; \
	done; exit $$status

.PHONY: check-deploy check-prod-install
check-deploy: install ## kustomize-render deploy/k8s; validate it and docker-compose.yml against their schemas
	scripts/check_deploy.sh

check-prod-install: $(UV) ## A fresh `uv sync --no-dev --no-editable` venv imports every module; `paystream --help` runs
	UV=$(UV) scripts/check_prod_install.sh

fmt: install ## Format and auto-fix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench-relay: install ## Outbox relay throughput (rows/s) on embedded defaults
	$(RUN) paystream bench relay

.PHONY: check-observability
check-observability: install ## promtool check/test the alert rules; rules and dashboard use real metrics
	PYTEST="$(RUN) pytest" scripts/check_observability.sh

clean: ## Remove .venv, .tools and runtime state under .paystream
	rm -rf .venv .tools .paystream
