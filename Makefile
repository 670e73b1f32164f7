# CodeForge developer entry points. Everything installs itself on a fresh machine and caches under
# ~/.cache/codeforge, so a second run is fast.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE      ?= $(HOME)/.cache/codeforge
UV_VERSION := 0.13.8
UV         := $(CACHE)/tools/bin/uv
export UV_CACHE_DIR := $(CACHE)/uv
export UV_PYTHON_DOWNLOADS := never
VENV       := .venv
PY         := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help deps lint fmt test test-fast demo bench crds clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	@echo ">> installing uv $(UV_VERSION) into $(CACHE)/tools"
	@python3 -m venv $(CACHE)/tools
	@$(CACHE)/tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	@echo ">> syncing Python packages into $(VENV) (locked by uv.lock)"
	@$(UV) sync --frozen --all-extras --quiet
	@touch $@

deps: $(VENV)/.synced ## install Python packages (.venv) and redis-server when missing
	@bash hack/ensure-redis.sh

lint: deps ## ruff, mypy --strict and import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: deps ## format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint ## lint, then the whole test suite on real Redis (single server and 6-node cluster)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: deps ## the suite without lint and without slow tests
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

demo: deps ## run the example development Workflow in one process (embedded queue, demo agents)
	@bash hack/demo.sh

bench: deps ## queue benchmark against Celery, arq, RQ, Dramatiq and a raw LPUSH/BRPOP loop
	$(VENV)/bin/codeforge bench queue --json bench/results/queue.json

clean: ## remove the virtualenv and caches of this checkout (not ~/.cache/codeforge)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
