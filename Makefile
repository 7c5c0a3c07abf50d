# The two commands: `make demo` and `make test`. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lint redis venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,hub]'
	touch $@

venv: $(VENV)/.installed

redis:
	@scripts/ensure-redis

# Every test on SQLite (the zero-setup default), then again on PostgreSQL: the tests with real
# worker processes and the modules marked `postgres` (the pages and the API with full-text
# search, staging's races, the authorisation matrix, the property-based harness and the
# environment jobs racing for one key). Each pass runs on TEST_PROCESSES processes
# (pytest-xdist; tests/conftest.py keeps them apart and runs the end-to-end tests on one).
PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_PROCESSES ?= 2
test: venv redis
	@scripts/ensure-postgres
	@scripts/ensure-browser
	@scripts/ensure-sandbox
	$(PY) -m pytest -q -n $(TEST_PROCESSES)
	GALLERY_DATABASE_URL=$(PG_URL) $(PY) -m pytest -q -n $(TEST_PROCESSES) -m "worker or postgres"

test-fast: venv redis
	@scripts/ensure-sandbox
	$(PY) -m pytest -q -n $(TEST_PROCESSES) -m "not e2e and not worker"

lint: venv
	$(VENV)/bin/ruff check gallery tests

# scripts/demo starts Redis itself when none answers, and stops it again at the end.
demo: venv
	scripts/demo

clean:
	rm -rf $(VENV) var
