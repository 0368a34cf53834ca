# `make run` and `make test` each do their own set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JS_DIRS := $(wildcard client-examples/js bench)

.PHONY: run test test-fast lint install js browser firefox prometheus bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

# npm ci in every JS package the tests drive (real yjs / y-websocket clients), and their builds: clients/js
# (the client library: tsc checks it and emits its .d.ts, then its browser test page) comes first, the
# examples and the web app depend on it (file:).
js:
	@for d in clients/js client-examples/js client-examples/dashboard webapp bench; do \
	  if [ -f $$d/package-lock.json ] && [ ! -f $$d/node_modules/.ci-stamp -o $$d/package-lock.json -nt $$d/node_modules/.ci-stamp ]; then \
	    echo "npm ci in $$d"; (cd $$d && npm ci --no-audit --no-fund --loglevel=error) && touch $$d/node_modules/.ci-stamp || exit 1; \
	  fi; \
	  if [ -f $$d/package.json ] && grep -q '"build"' $$d/package.json; then (cd $$d && npm run --silent build) || exit 1; fi; \
	done

# Headless Chromium for the browser tests (dashboard example, web app, client library) and Firefox ESR
# for the client library's (Debian's packages; needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# promtool for tests/test_alert_rules.py (Debian's prometheus package ships it; needs root).
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus for promtool"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# Firefox ESR for the browser tests in Firefox: web app, console, dashboard example, client library (Debian's package;
# puppeteer-core drives it over WebDriver BiDi: webapp/test/browsers.mjs; needs root).
firefox:
	@command -v firefox-esr >/dev/null 2>&1 || { \
	  echo "installing Debian's firefox-esr for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq firefox-esr >/dev/null; }

run: $(STAMP) js
	$(BIN)/webhost-sync serve

# ruff (lint), mypy (types) and import-linter (the layering contracts), all configured in pyproject.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint js browser firefox prometheus
	$(BIN)/pytest $(PYTEST_ARGS)

# The fast part: no real JS clients, no browser, no multi-node / Redis, nothing over ~10 s.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not js and not browser and not multinode and not slow" $(PYTEST_ARGS)

bench: $(STAMP) js
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var
