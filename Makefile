# sendguard: `make run` (demo on SQLite) and `make test` (whole suite). See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP := $(VENV)/.sendguard-installed
PYTEST_ARGS ?=

export VENV

.PHONY: help venv run test lint chromium

help:
	@echo "make run    demo: SQLite database, SMTP sink, sender and dashboard (http://127.0.0.1:8501)"
	@echo "make test   the whole suite, with a throwaway PostgreSQL and headless chromium (PYTEST_ARGS=...)"
	@echo "make lint   ruff check + ruff format --check"
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
	scripts/with-postgres.sh $(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
