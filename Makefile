# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp
ANVIL = chaintools/node_modules/.bin/anvil

.PHONY: install chaintools services browser demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	bash scripts/build_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# anvil (a real Ethereum node) and solc, pinned by chaintools/package-lock.json.
chaintools: $(ANVIL)

$(ANVIL): chaintools/package.json chaintools/package-lock.json
	# `npm ci`: the lock is the install (it lists every platform's optional anvil binary, so it is complete
	# everywhere and a fresh run changes no tracked file).
	cd chaintools && npm ci --no-audit --no-fund
	touch $(ANVIL)

services:
	bash scripts/services.sh

# Debian's chromium for the console's browser tests (driven by the pinned playwright package, no download).
browser:
	bash scripts/browser.sh

demo: install
	$(BIN)/wallet demo

test: install chaintools services browser
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

bench: install chaintools services
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; }
	$(BIN)/python bench/transfers.py
	$(BIN)/python bench/pool.py
	$(BIN)/python bench/shard_memory.py
	$(BIN)/python bench/http.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/red_packets.py

lint: install
	$(BIN)/ruff check --select F core storage ledger chain blockwatch actors web app devnet bench tests

clean:
	rm -rf $(VENV) chaintools/node_modules var
