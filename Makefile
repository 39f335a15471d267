# Two commands: `make run` (demo server on http://127.0.0.1:8080) and `make test`.
# Each creates the virtual environment and installs Python and npm dependencies when
# pyproject.toml or package.json changed (stamp files make it idempotent).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP  := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: run test lint deps clean

$(PY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(PY_STAMP) $(NPM_STAMP)

run: deps
	$(BIN)/vigil run --demo

lint: deps
	for f in static/*/*.js; do node --check "$$f" || exit 1; done
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server signaling monitoring

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) node_modules var .pytest_cache .ruff_cache
