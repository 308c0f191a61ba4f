# The README's two commands. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# the demo needs the package and its `demo` extra (the dashboard, `dg`); the tests need the
# `test` extra (which holds the demo's too). Each is installed once per pyproject.toml change.
DEMO_STAMP = $(VENV)/.installed-demo
STAMP      = $(VENV)/.installed

.PHONY: demo test test-fast lint bench install clean

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/layercode-pipeline demo $(DEMO_ARGS)

# everything, what CI runs: two workers (the machine's two cores); each slow module and the
# shared marts build run whole on one worker (tests/conftest.py)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

# the inner loop: everything but the tests marked slow (see tests/conftest.py), on two
# workers; the tests reading the shared marts build share one worker, so it is built once
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

PY_SOURCES = layercode_pipeline webhook_listener tests bench

# ruff (lint and format), mypy, and sqlfluff over the dbt models (its dbt templater compiles
# them against a scratch warehouse, never the pipeline's)
lint: $(STAMP)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	cd dbt_project && LAYERCODE_WAREHOUSE=$$(mktemp -d)/lint.duckdb ../$(BIN)/sqlfluff lint models tests --processes 2

clean:
	rm -rf $(VENV) data
