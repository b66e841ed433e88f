# Sanad: `make run` starts the platform, `make test` runs the suite (both set up first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STORE_VENV := .venv-store
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: setup deps broker run test test-unit test-compat bench lint stop clean

setup: deps broker

deps: $(VENV)/.installed $(STORE_VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@scripts/ensure-python.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $@

$(STORE_VENV)/.installed: requirements-store.txt
	@scripts/ensure-python.sh $(PYTHON)
	$(PYTHON) -m venv $(STORE_VENV)
	$(STORE_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-store.txt
	@touch $@

broker:
	@scripts/ensure-rabbitmq.sh

run: setup
	$(BIN)/honcho start -f Procfile

test: setup
	$(BIN)/pytest

test-unit: deps
	$(BIN)/pytest tests/unit

# Store-compatibility suite; point MONGO_URI at a real MongoDB to check portability.
test-compat: setup
	$(BIN)/pytest tests/compat -v

bench: setup
	$(BIN)/python bench/registry_bench.py
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/tasks_bench.py

lint: deps
	$(BIN)/ruff check .

stop:
	-@pkill -f "$(CURDIR)/[.]venv/bin/python -m services[.]common[.]run" && echo "stopped services" || true
	-@pkill -f "$(CURDIR)/[.]venv/bin/honcho start" || true
	-@if [ -f .data/store/nx.pid ]; then kill "$$(cat .data/store/nx.pid)" 2>/dev/null && echo "stopped store"; rm -f .data/store/nx.pid; fi

clean: stop
	rm -rf $(VENV) $(STORE_VENV) .data
