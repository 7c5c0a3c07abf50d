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
# worker processes, the pages and the API (full-text search), staging's races, the
# authorisation matrix, the property-based harness and the environment jobs racing for one key.
PG_URL ?= postgres://postgres@127.0.0.1:5432/postgres
test: venv redis
	@scripts/ensure-postgres
	@scripts/ensure-browser
	@scripts/ensure-sandbox
	$(PY) -m pytest -q
	GALLERY_DATABASE_URL=$(PG_URL) $(PY) -m pytest -q -m worker
	GALLERY_DATABASE_URL=$(PG_URL) $(PY) -m pytest -q tests/test_views.py tests/test_api.py tests/test_models.py \
		tests/test_staging.py tests/test_authz.py tests/test_harness.py tests/test_services_environments.py

test-fast: venv redis
	@scripts/ensure-sandbox
	$(PY) -m pytest -q -m "not e2e and not worker"

lint: venv
	$(VENV)/bin/ruff check gallery tests

# scripts/demo starts Redis itself when none answers, and stops it again at the end.
demo: venv
	scripts/demo

clean:
	rm -rf $(VENV) var
