# Parley: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv lint typecheck pytest services bench bench-quick bench-redis clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Parley needs Python 3.11 (apt-get install python3)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || { echo "Parley needs Python 3.11; $(PYTHON) is another version"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

## run: install and start the server on the embedded default (http://127.0.0.1:8000)
run: $(STAMP)
	$(BIN)/parley serve

## test: install what the tests need, start MariaDB and Redis, run every check and test
test: $(STAMP) services lint typecheck pytest

services:
	bash deploy/dev/services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider --cov --cov-report=term --cov-fail-under=93 -q

## bench: every published figure (about 8 minutes); see benchmarks/README.md
bench: $(STAMP) services
	$(BIN)/python benchmarks/run.py --with-1000

bench-quick: $(STAMP) services
	$(BIN)/python benchmarks/run.py --quick --only smoke relay comparison dispatch idle

bench-redis: $(STAMP) services
	$(BIN)/python benchmarks/redis_clients.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
