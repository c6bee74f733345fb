# sendguard: `make run` (demo on SQLite) and `make test` (whole suite). See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP := $(VENV)/.sendguard-installed
PYTEST_ARGS ?=
# Tests spend most of their time waiting on subprocesses, SMTP and fsync, so three workers fit two CPUs
# (pytest-xdist); PYTEST_WORKERS=0 runs in one process. Work stealing keeps the few minute-long tests
# from ending up queued behind each other on one worker.
PYTEST_WORKERS ?= 3
PYTEST_DIST ?= worksteal

export VENV

.PHONY: help venv run test lint chromium chaos chaos-ci bench bench-smoke

help:
	@echo "make run    demo: SQLite database, SMTP sink, sender and dashboard (http://127.0.0.1:8501)"
	@echo "make test   the whole suite, with a throwaway PostgreSQL and headless chromium (PYTEST_ARGS=...)"
	@echo "make lint   ruff check + ruff format --check"
	@echo "make chaos  the chaos soak: 8 senders, 20,000 leads, 5 min, on SQLite and PostgreSQL (CHAOS_ARGS=...)"
	@echo "make bench  issue 5's figures: throughput beside raw floors on both backends, pause exactness (slow)"
	@echo "make venv   create/refresh $(VENV) (re-installs only when pyproject.toml changed)"

venv: $(STAMP)

# Re-installs only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			rm -rf $(VENV); apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); \
		else echo "!!! python venv support is missing: sudo apt-get install -y python3-venv"; exit 1; fi; }
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

run: venv
	scripts/run-demo.sh

# Browser tests drive the system chromium; install it only when it is missing.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo "!!! /usr/bin/chromium is missing: browser tests need it; run: sudo apt-get install -y chromium"; \
		fi; \
	fi

test: venv chromium
	scripts/with-postgres.sh $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist $(PYTEST_DIST) --durations=25 $(PYTEST_ARGS)

# The chaos soak (scripts/chaos.py; not part of `make test`): senders through random SIGKILLs, failpoint
# crashes and SMTP faults on SQLite, then PostgreSQL; exit 1 on any duplicate or loss. Flags in
# CHAOS_ARGS override the defaults, e.g. `make chaos CHAOS_ARGS='--duration 60 --seed 7'`.
CHAOS_ARGS ?=
CHAOS_CI_ARGS ?= --senders 4 --leads 10000 --duration 120
chaos: venv
	@rc=0; for backend in sqlite postgresql; do for pipelining in --pipelining ""; do \
		$(VENV)/bin/python scripts/chaos.py --backend $$backend $$pipelining --senders 8 --leads 20000 --duration 300 $(CHAOS_ARGS) || rc=1; \
	done; done; exit $$rc

# The short soak CI runs after the suite (.ci/run): each backend against a peer with PIPELINING (the
# sender's overlapped path, what real servers offer) and one without (the one-by-one path).
chaos-ci: venv
	@rc=0; for backend in sqlite postgresql; do \
		$(VENV)/bin/python scripts/chaos.py --backend $$backend --pipelining $(CHAOS_CI_ARGS) || rc=1; \
		$(VENV)/bin/python scripts/chaos.py --backend $$backend $(CHAOS_CI_ARGS) --duration 60 || rc=1; \
	done; exit $$rc

# Issue 5's figures (bench/README.md): sends/s beside the raw floors, and pause exactness. Slow (minutes).
bench: venv
	scripts/with-postgres.sh bash -c '\
		$(VENV)/bin/python bench/throughput.py --backend sqlite --senders 1 ; \
		$(VENV)/bin/python bench/throughput.py --backend postgresql --senders 1 ; \
		$(VENV)/bin/python bench/throughput.py --backend postgresql --senders 4 --leads 6000 ; \
		$(VENV)/bin/python bench/throughput.py --backend sqlite --senders 1 --transport smtp ; \
		$(VENV)/bin/python bench/pause.py --backend sqlite ; \
		$(VENV)/bin/python bench/pause.py --backend postgresql'

# The CI regression guard (.ci/run): ~30 s on SQLite (median of 3); fails only when sendguard's rate
# drops below BENCH_SMOKE_MIN_RATIO of the raw floor measured in the same run (the median of three runs,
# so one run on a noisy box does not decide). The sender measures 0.72-1.07 of the floor (bench/README.md).
BENCH_SMOKE_MIN_RATIO ?= 0.5
bench-smoke: venv
	$(VENV)/bin/python bench/throughput.py --backend sqlite --senders 1 --leads 3000 --repeat 3 \
		--min-ratio $(BENCH_SMOKE_MIN_RATIO)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
