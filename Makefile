# Two commands do all the set-up: `make run` and `make test`.  Each creates .venv if needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
SERVER_NAME ?= localhost
CLIENT_PORT ?= 8008

.PHONY: run test bench lint install install-test clean prosody

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# The stamps re-run pip only when the dependency list changes.
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.cfg
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(DATA_DIR)/homeserver.yaml: | $(VENV)/.installed
	$(BIN)/homeserver generate-config --server-name $(SERVER_NAME) --data-dir $(DATA_DIR) --client-port $(CLIENT_PORT)

## make run: generate data/homeserver.yaml on first start (SQLite under ./data), run in the foreground
run: $(VENV)/.installed $(DATA_DIR)/homeserver.yaml
	$(BIN)/homeserver run -c $(DATA_DIR)/homeserver.yaml

## make test: install what the tests need and run the whole suite (CI=true makes PostgreSQL mandatory)
# In PYTEST_WORKERS processes (pytest-xdist), a test file never split between two (its
# module-scoped servers start once), in tests/conftest.py's order (the long interop files
# first) rather than xdist's most-tests-first; PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-test prosody
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The XMPP bridge's tests run Debian's Prosody (their own config, loopback ports; never the
# system service, whose default ports they do not use). Installed when missing and apt-get is
# there (CI runs as root); without it the XMPP tests skip, or fail when CI=true.
prosody:
	@if ! command -v prosody >/dev/null && command -v apt-get >/dev/null; then \
		apt-get install -y -q prosody || { apt-get update -q && apt-get install -y -q prosody; }; \
	fi

## make bench: benchmarks under tests/bench
bench: $(VENV)/.installed-test
	$(BIN)/python tests/bench/state_res_bench.py --compare-synapse
	$(BIN)/python tests/bench/compare.py $(BENCH_ARGS)

## make lint: ruff and mypy
lint: $(VENV)/.installed-test
	$(BIN)/ruff check homeserver appservices tests
	$(BIN)/mypy homeserver appservices

clean:
	rm -rf $(VENV) build *.egg-info
