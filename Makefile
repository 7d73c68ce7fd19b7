# Everything a fresh machine needs is installed here: a venv with the Python packages, and Debian's
# prometheus (for the tests that run a real server). Both steps are idempotent and quick the second time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all install prometheus demo test test-fast lint bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }

demo: install
	$(VENV)/bin/canary demo --scenario healthy
	$(VENV)/bin/canary demo --scenario latency-regression || test $$? -eq 1

lint: install
	$(VENV)/bin/ruff check canary tests bench
	$(VENV)/bin/ruff format --check canary tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install prometheus lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not prometheus"

bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) bench/detection.py --scenarios bench/scenarios/default.json --judge all --replications 200 --seed 1 --json bench/results-default.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
