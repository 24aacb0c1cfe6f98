# The two commands of the README:
#   make demo   set everything up and run the main job (the whole loop on embedded defaults)
#   make test   set everything up and run the test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: system-deps setup demo test test-fast bench up down status

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fix: install Python 3.11 or run make PYTHON=python3)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools prints an informational "Editable installation" notice on every editable build: not for the user
	PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/python -m pip install --quiet -e '.[test,bench,ner]'
	@touch $(STAMP)

# System packages the tests need (headless Chromium for the UI screenshot); Java and Maven are checked too.
system-deps:
	@command -v java >/dev/null || { echo "error: Java not found (fix: apt-get install openjdk-17-jre-headless)"; exit 2; }
	@command -v mvn >/dev/null || { echo "error: Maven not found (fix: apt-get install maven)"; exit 2; }
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; the UI screenshot test will fail"; \
	  else echo "warning: chromium missing (fix: sudo apt-get install chromium)"; fi; }

setup: $(STAMP)
	$(BIN)/lakeloop infra fetch

demo: setup
	$(BIN)/lakeloop demo

test: system-deps setup
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
