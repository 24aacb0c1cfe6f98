# The two commands of the README:
#   make demo   set everything up and run the main job (the whole loop on embedded defaults)
#   make test   set everything up and run the test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV     ?= uv

.PHONY: system-deps setup demo test test-fast bench up down status lock audit

# The Python deps come from requirements.lock (every package pinned, with its sha256 hashes, for Linux x86_64 and
# Python 3.11; pip and setuptools too), then lakeloop itself, editable, with no deps and no build isolation (built by
# the lock's setuptools). `make lock` regenerates the lock (see README, "Supply chain").
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fix: install Python 3.11 or run make PYTHON=python3)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	@# setuptools prints an informational "Editable installation" notice on every editable build: not for the user
	PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# Regenerate requirements.lock (needs uv: `pipx install uv`). Pins already in the lock are kept unless asked:
#   make lock LOCK_ARGS=--upgrade                    everything to the newest allowed by pyproject.toml
#   make lock LOCK_ARGS="--upgrade-package torch"    one package (and what it needs)
# .ci/pip-audit.lock pins the auditor itself (make audit).
lock:
	@command -v $(UV) >/dev/null || { echo "error: uv not found (fix: pipx install uv, or make lock UV=/path/to/uv)"; exit 2; }
	$(UV) pip compile pyproject.toml requirements-build.in --extra test --extra bench --extra ner \
	  --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command "make lock" -o $(LOCK) $(LOCK_ARGS)
	$(UV) pip compile .ci/pip-audit.in --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command "make lock" -o .ci/pip-audit.lock $(LOCK_ARGS)

# pip-audit against requirements.lock (what .ci/run does first): fails on a known vulnerability not listed with its
# reason in .ci/pip-audit-ignore; says so, and passes, when no vulnerability service answers.
audit:
	$(PYTHON) .ci/audit.py

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
