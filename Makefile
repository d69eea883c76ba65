# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo serve test test-fast lint typecheck bench schemas package fuzz web

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,aws,local]"
	touch $(STAMP)

# The web dashboard's pinned front-end libraries (web/package-lock.json), the few files the pages load
# copied into palette/web/static/vendor/ (gitignored); rerun when the lock file changes.
VENDOR := palette/web/static/vendor
VENDOR_STAMP := $(VENDOR)/.installed-stamp

web: $(VENDOR_STAMP)

$(VENDOR_STAMP): web/package-lock.json
	npm ci --prefix web --ignore-scripts --no-audit --no-fund
	mkdir -p $(VENDOR)
	cp web/node_modules/@picocss/pico/css/pico.min.css $(VENDOR)/pico.min.css
	cp web/node_modules/lit-html/lit-html.js $(VENDOR)/lit-html.js
	cp web/node_modules/chart.js/dist/chart.umd.js $(VENDOR)/chart.umd.js
	cp web/node_modules/eventsource-parser/dist/index.js $(VENDOR)/eventsource-parser.js
	touch $(VENDOR_STAMP)

# The main job, then the web dashboard on it: user `demo` (the demo's owner) signs in with DEMO_PASSWORD
# (local only: the server listens on 127.0.0.1), until Ctrl-C. Run from a terminal, `make demo` goes on to
# serve the dashboard; run by a script (stdin not a terminal) it ends after the job and prints `make serve`.
DEMO_PORT ?= 8000
DEMO_PASSWORD ?= palette-demo

demo: $(STAMP) $(VENDOR_STAMP)
	$(VENV)/bin/palette demo --data-dir .palette
	@echo "$(DEMO_PASSWORD)" | $(VENV)/bin/palette user create demo --data-dir .palette --password-stdin >/dev/null 2>&1 \
	  || echo "$(DEMO_PASSWORD)" | $(VENV)/bin/palette user password demo --data-dir .palette --password-stdin >/dev/null
	@if [ -t 0 ]; then $(MAKE) --no-print-directory serve; \
	  else echo ""; echo "Web dashboard: run 'make serve', open http://127.0.0.1:$(DEMO_PORT)/ and sign in as demo / $(DEMO_PASSWORD)"; fi

# The web dashboard and the API on the demo's data (.palette), until Ctrl-C.
serve: $(STAMP) $(VENDOR_STAMP)
	@echo ""
	@echo "Web dashboard: open http://127.0.0.1:$(DEMO_PORT)/ and sign in as user demo, password $(DEMO_PASSWORD)"
	@echo "(Ctrl-C stops the server; make serve DEMO_PORT=8001 if 8000 is taken)"
	$(VENV)/bin/palette serve --data-dir .palette --port $(DEMO_PORT)

# Lint (ruff, import-linter) and types (mypy) first, with zero findings, then the suite on two
# pytest-xdist workers (the suite mostly waits on servers and subprocesses: 9.5 min instead of 16.5); each
# browser module stays on one worker (loadgroup), so its site starts once.
test: $(STAMP) $(VENDOR_STAMP) lint typecheck
	$(PY) -m contracts.schemagen --check
	$(VENV)/bin/cfn-lint infra/*.yaml
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The suite without the real local model and the load and fuzz runs (`slow`) and without the
# moto-server AWS flow (`aws_e2e`).
test-fast: $(STAMP) $(VENDOR_STAMP)
	$(PY) -m pytest -q -m "not slow and not aws_e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The schemathesis run of `make test`, deeper: 200 valid and 200 invalid cases per operation.
fuzz: $(STAMP)
	PALETTE_FUZZ_EXAMPLES=200 $(PY) -m pytest -q -s tests/e2e/test_openapi_fuzz.py

bench: $(STAMP)
	$(PY) -m bench.eventstore
	$(PY) -m bench.seeds
	$(PY) -m bench.generator
	$(PY) -m bench.budget
	$(PY) -m bench.replay
	$(PY) -m bench.guard
	$(PY) -m bench.api_load
	$(PY) -m bench.api

schemas: $(STAMP)
	$(PY) -m contracts.schemagen
	$(PY) -m scripts.infra_schemas

# One deployable artifact per service (+ the outbox publisher) under build/package/, which
# the SAM templates' CodeUri point at (docs/deploy-aws.md).
package: $(STAMP)
	$(PY) -m scripts.package --zip
