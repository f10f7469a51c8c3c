# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint format install clean

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

## Run the whole test suite against real Synapse (POLICE_TEST_POSTGRES=1 for PostgreSQL).
test: $(STAMP)
	bash devtools/system-packages.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks (not tests): prints a table of ratios measured in one run.
bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache
