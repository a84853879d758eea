# Two commands for a newcomer: `make run` and `make test`. Everything else is built on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= .clexproxy-data

.PHONY: run test build test-pure test-tools node-clients lint clean bench bench-quick bench-peers bench-tools

# The venv is rebuilt whenever the package definition or the compiled source changes.
$(STAMP): pyproject.toml setup.py $(wildcard clexproxy/fastpath/*.pyx)
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || (apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'Cython>=3.0' 'setuptools>=77' wheel
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[test,dev]'
	@# A new file, not an overwrite: a running gateway has the old one mapped and would crash.
	rm -f clexproxy/fastpath/_*.so
	$(PY) setup.py -q build_ext --inplace
	@touch $(STAMP)

build: $(STAMP)

run: build
	$(VENV)/bin/clexproxy serve --demo --host 127.0.0.1 --port 8080 --data-dir $(DATA)

test: build test-tools node-clients
	$(PY) -m pytest -q -p no:cacheprovider tests

# The servers the tests start for real (never mocks): Redis, and PostgreSQL for the multi-host store;
# promtool (Debian's prometheus package), which unit-tests deploy/alerts.yml on deploy/alerts.test.yml;
# and Debian's chromium, the headless browser Playwright drives in tests/browser (Playwright's own
# browser download is not reachable: never `playwright install`).
test-tools:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)
	@command -v promtool >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
	@test -x /usr/bin/chromium \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null)

# The official Node clients (openai, the Vercel AI SDK) that tests/integration/test_sdk_node.py drives:
# `npm ci` from the committed lock file, again only when that file changes (npm's own cache keeps it quick).
# Node itself comes with the machine; Debian's nodejs and npm where it does not.
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)
	cd tests/node && npm ci --no-audit --no-fund --prefer-offline --loglevel=error
	@touch $(NODE_STAMP)

node-clients: $(NODE_STAMP)

# The same suite on the pure-Python twins of the fastpath modules.
test-pure: build test-tools node-clients
	CLEXPROXY_NO_EXTENSIONS=1 $(PY) -m pytest -q -p no:cacheprovider tests

# Benchmarks: wrk, nginx (the static upstream) and valgrind from Debian; matplotlib for the chart.
bench-tools: build
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v taskset >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq wrk nginx-light util-linux >/dev/null)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check matplotlib

bench: bench-tools
	$(PY) benchmarks/bench.py

bench-quick: bench-tools
	$(PY) benchmarks/bench.py --quick --out benchmarks/out

# The same harness against LiteLLM's proxy and Portkey's gateway, installed on demand in their own folders.
bench-peers: bench-tools
	$(PY) benchmarks/peers/peers.py install litellm
	$(PY) benchmarks/peers/peers.py install portkey
	$(PY) benchmarks/bench.py --only abc --peers litellm,portkey

lint: build
	$(VENV)/bin/ruff check clexproxy tests benchmarks
	$(VENV)/bin/mypy clexproxy

clean:
	rm -rf $(VENV) tests/node/node_modules build clexproxy/fastpath/_*.c clexproxy/fastpath/_*.so $(DATA)
