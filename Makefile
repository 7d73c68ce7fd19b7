# Everything a fresh machine needs is installed here: a venv with the Python packages, and Debian's
# prometheus (for the tests that run a real server) and chromium (the report's browser test). Each step is
# idempotent and quick the second time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all install prometheus chromium demo test test-fast lint bench report-screenshot clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }

chromium:
	@test -x /usr/bin/chromium || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: install
	$(VENV)/bin/canary demo --scenario healthy
	$(VENV)/bin/canary demo --scenario latency-regression || test $$? -eq 1

lint: install
	$(VENV)/bin/ruff check canary tests bench
	$(VENV)/bin/ruff format --check canary tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install prometheus chromium lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not prometheus"

bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) bench/detection.py --scenarios bench/scenarios/default.json --judge all --replications 200 --seed 1 --json bench/results-default.json

# The README's picture: the demo's healthy rollout as `canary report` draws it, in headless Chromium.
report-screenshot: install chromium
	$(VENV)/bin/canary demo --scenario healthy --audit .report-demo.jsonl --output json >/dev/null
	$(VENV)/bin/canary report .report-demo.jsonl -o .report-demo.html
	$(PY) tests/browser.py .report-demo.html docs/report-demo.png
	rm -f .report-demo.jsonl .report-demo.jsonl.lock .report-demo.html

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
