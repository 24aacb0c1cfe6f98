# The two commands of the README:
#   make demo   set everything up and run the main job (the whole loop on embedded defaults)
#   make test   set everything up and run the test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast bench up down status clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fix: install Python 3.11 or run make PYTHON=python3)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(STAMP)

setup: $(STAMP)
	$(BIN)/lakeloop infra fetch

demo: setup
	$(BIN)/lakeloop demo

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench

up: setup
	$(BIN)/lakeloop up

down:
	$(BIN)/lakeloop down

status:
	$(BIN)/lakeloop status
