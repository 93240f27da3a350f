# qlite: `make run` runs the demo on a local SeaweedFS, `make test` runs the suite, `make check` lints first (CI).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Test processes (pytest-xdist): each starts SeaweedFS (and moto server when a test asks).
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: help install run demo-web test test-all check lint clean bench bench-fleet bench-idle profile chaos test-endpoint browser test-django6

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with qlite, test servers and tools

run: $(STAMP) ## start SeaweedFS + a worker on examples/, enqueue demo jobs, keep running
	$(PY) scripts/demo.py

demo-web: $(STAMP) ## the feeds example (a Django site + worker) on a local SeaweedFS: PORT=8000
	$(PY) scripts/demo_web.py --port $(or $(PORT),8000)

browser: ## Debian's Chromium for the dashboard's browser tests (apt-get, as root)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

test: $(STAMP) browser ## the suite on SeaweedFS (store conformance also on moto), then the Django 6 tier if python3.12 is found [TEST_WORKERS=auto|0|N]
	$(PYTEST) -n $(TEST_WORKERS) $(PYTEST_ARGS)
	@# Django 6 needs Python >= 3.12: its tier runs when one is found (not for a PYTEST_ARGS selection)
	@if [ -n "$(PYTEST_ARGS)" ]; then echo "note: Django 6 tier not run (PYTEST_ARGS selects tests; make test-django6 runs it)"; \
	elif [ -z "$(PY312)" ]; then echo "note: Django 6 tier not run: no python3.12 found (Django 6 needs Python >= 3.12). Try: pyenv install 3.12"; \
	else $(MAKE) --no-print-directory test-django6; fi

test-all: $(STAMP) browser ## the whole suite on SeaweedFS and on moto server
	QLITE_TEST_SERVERS=seaweedfs,moto $(PYTEST) -n $(TEST_WORKERS) $(PYTEST_ARGS)

# A python3.12 that runs (a pyenv shim is found on PATH even when 3.12 is not the active version).
PY312 := $(shell for p in $$(command -v python3.12) $$(ls $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12 2>/dev/null); do $$p -c "" 2>/dev/null && echo $$p && break; done)
DJ6 := .venv-django6
DJ6_STAMP := $(DJ6)/.installed-stamp

$(DJ6_STAMP): pyproject.toml
	@test -n "$(PY312)" || { echo "Error: python3.12 not found; Django 6 needs Python >= 3.12. Try: pyenv install 3.12 (the 5.2 backport tier runs in make test)" >&2; exit 2; }
	test -x $(DJ6)/bin/python || $(PY312) -m venv $(DJ6)
	$(DJ6)/bin/python -m pip install -q 'django>=6.0,<6.1' -e '.[dev]'
	touch $@

test-django6: $(DJ6_STAMP) ## qlite.django on Django 6 + Django's own tests/tasks on qlite (python3.12; part of make test when found)
	$(DJ6)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) tests/test_django.py tests/test_feeds.py
	@# Django's own tests/tasks against qlite: from the sdist of the Django installed (not committed)
	V=$$($(DJ6)/bin/python -c 'import django; print(django.__version__)'); \
	test -d $(DJ6)/django-src/django-$$V/tests/tasks || { \
	  $(DJ6)/bin/python -m pip download -q --no-deps --no-binary :all: django==$$V -d $(DJ6)/django-src && \
	  tar xzf $(DJ6)/django-src/django-$$V.tar.gz -C $(DJ6)/django-src --wildcards "*/tests/tasks/*"; }; \
	$(DJ6)/bin/python tests/djangosuite/run.py $(DJ6)/django-src/django-$$V/tests

test-endpoint: $(STAMP) ## the suite against any S3 endpoint: ENDPOINT=http://host:port [PYTEST_ARGS=...]
	@test -n "$(ENDPOINT)" || { echo "Error: ENDPOINT is not set. Try: make test-endpoint ENDPOINT=http://127.0.0.1:4566 (see localstack/README.md)" >&2; exit 2; }
	QLITE_TEST_ENDPOINT=$(ENDPOINT) $(PYTEST) $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check qlite tests scripts examples
	$(VENV)/bin/mypy

check: lint test ## ruff, mypy, then the suite: what .ci/run runs

chaos: $(STAMP) ## the long chaos tiers, both servers: 5,000 jobs, 25 SIGKILLs; a fleet of 4: 3,000 jobs, 12 SIGKILLs, a pause
	QLITE_CHAOS_JOBS=5000 QLITE_CHAOS_KILLS=25 QLITE_CHAOS_FLEET_JOBS=3000 QLITE_CHAOS_FLEET_KILLS=12 QLITE_CHAOS_SERVERS=seaweedfs,moto $(PYTEST) -s tests/test_chaos.py tests/test_chaos_fleet.py

bench: $(STAMP) ## benchmark vs raw boto3, Huey, RQ, Celery, then idle as deployed and the fleet case (~27 min; bench/results.*)
	bash bench/ensure.sh $(PY)
	$(PY) -m bench

bench-fleet: $(STAMP) ## the fleet case alone: 1, 2, 4 workers on one bucket, idle cost (~5 min)
	$(PY) -m bench fleet

bench-idle: $(STAMP) ## idle cost as deployed (worker + Litestream, via a counting proxy), pickup after idle (~14 min)
	$(PY) -m bench idle

profile: $(STAMP) ## py-spy on a worker draining 10,000 packed no-op jobs: the loop's top functions, jobs/s (~30 s; BENCH_PROFILE_*)
	bash bench/ensure.sh $(PY) --profile
	$(PY) -m bench.profile

clean: ## remove the venv and local data
	rm -rf $(VENV) $(DJ6) .qlite-dev .pytest_cache
