# Parley: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# One install stamp per lock file: a changed lock (or pyproject.toml) reinstalls.
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-test
# `make lock`: uv (from PyPI, this version) writes the hashed lock files that pip installs.
UV_VERSION := 0.13.9
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet \
              --custom-compile-command "make lock"
# UPGRADE=all: every package to the newest that pyproject.toml allows; UPGRADE="a b": those
UPGRADE_FLAGS = $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))
# The build backend (setuptools) is locked too: `pip install -e .` builds without isolation
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; \
  print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

.PHONY: run test venv lock lint typecheck pytest services bench bench-quick bench-redis bench-backup bench-soak bench-setup clean fuzz

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Parley needs Python 3.11 (apt-get install python3)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || { echo "Parley needs Python 3.11; $(PYTHON) is another version"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The locked set with hashes, then the project itself; pip check catches a lock that
# misses a dependency pyproject.toml declares (someone added one without `make lock`).
$(RUN_STAMP): requirements/run.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/run.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/pip check || { echo "the lock files miss a dependency: run make lock"; exit 1; }
	@touch $@

$(STAMP): requirements/test.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/test.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/pip check || { echo "the lock files miss a dependency: run make lock"; exit 1; }
	@touch $@

venv: $(STAMP)

## run: install and start the server on the embedded default (http://127.0.0.1:8000)
run: $(RUN_STAMP) web
	$(BIN)/parley serve

## test: install what the tests need, start MariaDB and Redis, run every check and test
test: $(STAMP) services lint typecheck web-test pytest

## lock: regenerate requirements/run.txt and requirements/test.txt from pyproject.toml,
## keeping today's pins where pyproject.toml still allows them (see UPGRADE above)
lock: | $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile pyproject.toml - $(LOCK_FLAGS) $(UPGRADE_FLAGS) \
	  -o requirements/run.txt
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile pyproject.toml - --extra test $(LOCK_FLAGS) \
	  $(UPGRADE_FLAGS) --constraint requirements/run.txt -o requirements/test.txt

services:
	bash deploy/dev/services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) web browser-deps
	$(BIN)/pytest -p no:cacheprovider --cov --cov-report=term --cov-fail-under=93 -q

## web: build the browser client (web/dist) when it is missing or older than its sources
WEB_SRC := $(shell find web/src web/public -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json
WEB_MODULES := web/node_modules/.package-lock.json
.PHONY: web web-test browser-deps

$(WEB_MODULES): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { \
	  echo "installing nodejs and npm (Debian)"; apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd web && npm ci --no-audit --no-fund
	@touch $@

web/dist/index.html: $(WEB_MODULES) $(WEB_SRC)
	cd web && npm run build
	@touch $@

web: web/dist/index.html

## web-test: TypeScript (strict, no emit) and the protocol client's Vitest tests
web-test: $(WEB_MODULES)
	cd web && npx tsc --noEmit && npx vitest run

## browser-deps: Debian's Chromium for tests/browser (never a downloaded browser)
browser-deps:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium (Debian)"; apt-get update -qq && apt-get install -y -qq chromium; }

## fuzz: the WebSocket fuzzing run, 50,000 examples per backend (make test runs 6,000;
## the figures are in docs/SPEC.md 2.3)
fuzz: $(STAMP) services
	PARLEY_FUZZ_EXAMPLES=50000 $(BIN)/pytest -p no:cacheprovider -q -s tests/security/test_fuzz_ws.py

## bench: every published figure (about 8 minutes); see benchmarks/README.md
bench: $(STAMP) services
	$(BIN)/python benchmarks/run.py --with-1000

bench-quick: $(STAMP) services
	$(BIN)/python benchmarks/run.py --quick --only smoke relay comparison dispatch idle

bench-redis: $(STAMP) services
	$(BIN)/python benchmarks/redis_clients.py

## bench-backup: relay latency during a backup of 1,000,000 messages (~20 min; backup_load.json)
bench-backup: $(STAMP) services
	$(BIN)/python benchmarks/backup_load.py

## bench-soak: 200 streams for 30 minutes on MariaDB + Redis (soak.json, soak.png)
bench-soak: $(STAMP) services
	$(BIN)/python benchmarks/soak.py

## bench-setup: server CPU per guest sign-up and per WebSocket connect (setup_cost.json)
bench-setup: $(STAMP) services
	$(BIN)/python benchmarks/setup_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
