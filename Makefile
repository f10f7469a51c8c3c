# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

NODE_STAMP := tests/strict_client/node_modules/.package-lock.json

.PHONY: run test test-setup bench lint format install clean system-packages

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start a development homeserver on http://127.0.0.1:8008 (SQLite, state in var/).
run: $(STAMP)
	bash devtools/system-packages.sh run
	$(PY) -m devtools.run

system-packages:
	bash devtools/system-packages.sh

# The strict E2EE client of the tests (matrix-js-sdk in Node, tests/strict_client.py).
$(NODE_STAMP): tests/strict_client/package-lock.json tests/strict_client/package.json | system-packages
	npm ci --prefix tests/strict_client --no-audit --no-fund
	touch $(NODE_STAMP)

## Run the whole test suite against real Synapse (POLICE_TEST_POSTGRES=1 for PostgreSQL).
test: test-setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything the suite needs installed; `.ci/run` does it once before its two runs.
test-setup: $(STAMP) system-packages $(NODE_STAMP)

## Benchmarks (not tests): prints a table of ratios measured in one run.
bench: $(STAMP)
	$(PY) -m bench

# mypy checks the `files` of [tool.mypy] in pyproject.toml (bots/ for now).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache tests/strict_client/node_modules
