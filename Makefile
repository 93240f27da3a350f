# qlite: `make run` runs the demo on a local SeaweedFS, `make test` runs the suite, `make check` lints first (CI).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help install run test check lint clean bench bench-fleet chaos test-endpoint browser

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with qlite, test servers and tools

run: $(STAMP) ## start SeaweedFS + a worker on examples/, enqueue demo jobs, keep running
	$(PY) scripts/demo.py

browser: ## Debian's Chromium for the dashboard's browser tests (apt-get, as root)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

test: $(STAMP) browser ## run the suite (starts SeaweedFS and moto server on free ports)
	$(PY) -m pytest -q -p no:cacheprovider

test-endpoint: $(STAMP) ## the suite against any S3 endpoint: ENDPOINT=http://host:port [PYTEST_ARGS=...]
	@test -n "$(ENDPOINT)" || { echo "Error: ENDPOINT is not set. Try: make test-endpoint ENDPOINT=http://127.0.0.1:4566 (see localstack/README.md)" >&2; exit 2; }
	QLITE_TEST_ENDPOINT=$(ENDPOINT) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check qlite tests scripts examples

check: lint test ## ruff, then the suite: what .ci/run runs

chaos: $(STAMP) ## the long chaos tiers, both servers: 5,000 jobs, 25 SIGKILLs; a fleet of 4: 3,000 jobs, 12 SIGKILLs, a pause
	QLITE_CHAOS_JOBS=5000 QLITE_CHAOS_KILLS=25 QLITE_CHAOS_FLEET_JOBS=3000 QLITE_CHAOS_FLEET_KILLS=12 QLITE_CHAOS_SERVERS=seaweedfs,moto $(PY) -m pytest -q -s -p no:cacheprovider tests/test_chaos.py tests/test_chaos_fleet.py

bench: $(STAMP) ## benchmark vs raw boto3, Huey, RQ, Celery, then the fleet case (~16 min; bench/results.*)
	bash bench/ensure.sh $(PY)
	$(PY) -m bench

bench-fleet: $(STAMP) ## the fleet case alone: 1, 2, 4 workers on one bucket, idle cost (~5 min)
	$(PY) -m bench fleet

clean: ## remove the venv and local data
	rm -rf $(VENV) .qlite-dev .pytest_cache
