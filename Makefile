# eleads: `make run` (set up, then run the daemon on the embedded default config.yaml)
#         `make test` (set up, then ruff + mypy + the whole pytest suite on SQLite, then
#                      again on a throw-away PostgreSQL cluster: tests/pg.py)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck pytest test-postgresql bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "eleads needs Python >= 3.11"'
	@if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (Debian ships venv separately)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	    $(PYTHON) -m venv $(VENV); \
	  else echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)"; exit 2; fi; \
	fi
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/eleads serve --config config.yaml

lint: setup
	$(BIN)/ruff check daemon tests benchmarks
	$(BIN)/ruff format --check daemon tests benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

# The same suite with every test database on PostgreSQL (skipped without the server
# binaries, except under CI=true).
test-postgresql: setup
	ELEADS_TEST_DATABASE=postgresql $(BIN)/pytest

test: lint typecheck pytest test-postgresql

bench: setup
	$(BIN)/python benchmarks/smtp_ingest.py
	$(BIN)/python benchmarks/parse.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
