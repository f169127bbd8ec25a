# make install | js | lint | format | test | unit | stack | demo | bench | router-accuracy
#      gemini-smoke | console | console-check | browser
# Everything runs from the project's own virtualenv (.venv), built from the pinned
# requirements on first use, so a fresh clone needs only python3 and make.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_PATHS := shared functions infra tests scripts client

.PHONY: install js lint format test unit stack demo bench router-accuracy clean gemini-smoke \
	console console-deps console-check browser

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# supabase-js for the JS tests (tests/js), exactly as package-lock.json pins it
JS_STAMP := tests/js/node_modules/.package-lock.json
js: $(JS_STAMP)

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund

lint: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy
	@# every function is its own "main" module, as Cloud Functions loads it: check each alone
	for f in functions/*/main.py; do $(PY) -m mypy --no-incremental "$$f" || exit 1; done

format: install
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS)

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: lint console-check js browser
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

# the unit tier alone: nothing started, seconds (make test runs it first too)
unit: install
	$(PY) -m pytest -q tests/unit

# a person watching `make stack` (its console) or `make demo` sees each step move: the AI work
# pauses this long after each one (LOCAL_STEP_DELAY_MS; tests and deploys leave it 0)
DEMO_STEP_DELAY_MS ?= 1500

stack: install
	LOCAL_STEP_DELAY_MS=$(DEMO_STEP_DELAY_MS) $(PY) -m infra.local.stack $(ARGS)

demo: install
	LOCAL_STEP_DELAY_MS=$(DEMO_STEP_DELAY_MS) $(PY) -m infra.local.demo

bench: install
	$(PY) scripts/bench.py
	$(PY) scripts/bench_realtime.py

# incident detection and root cause on the synthetic fleet and on the held-out labelled fleet
# (tests/data/heldout_*.json, written before tuning), also with its server ids shuffled/reversed,
# and on 40 generated stress fleets with the confidence calibration
quality: install
	$(PY) scripts/quality.py -v --generated 40

# the labelled set the router's cues were tuned on, then a held-out set written afterwards
router-accuracy: install
	$(PY) scripts/router_accuracy.py tests/data/router_labelled.jsonl
	$(PY) scripts/router_accuracy.py tests/data/router_heldout.jsonl

# The web console (functions/ai-jobs-console/static/) is built from console/ with the locked npm
# packages and committed, so deploying needs no Node; console-check proves it is current.
CONSOLE_DEPS := console/node_modules/.package-lock.json

console-deps: $(CONSOLE_DEPS)

$(CONSOLE_DEPS): console/package.json console/package-lock.json
	@command -v npm >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; }
	cd console && npm ci --no-audit --no-fund

console: console-deps
	cd console && node build.mjs

console-check: console-deps
	cd console && node build.mjs --check

# Debian's headless Chromium for the console's browser tests (Playwright drives it by path and
# never downloads a browser), with Korean and emoji fonts so the screenshots read as a person's.
BROWSER_PACKAGES := chromium fonts-nanum fonts-noto-color-emoji
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi nanum \
		|| ! fc-list 2>/dev/null | grep -qi "color emoji"; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BROWSER_PACKAGES); \
	fi

clean:
	rm -rf $(VENV) .local build .pytest_cache .mypy_cache .ruff_cache console/node_modules

# Opt-in: the project's exact Gemini request against the real API (two billed calls). Needs
# GEMINI_API_KEY; GEMINI_MODEL / GEMINI_THINKING_LEVEL / GEMINI_MAX_OUTPUT_TOKENS as deployed.
gemini-smoke: install
	@test -n "$$GEMINI_API_KEY$$GOOGLE_API_KEY" || { echo "gemini-smoke needs GEMINI_API_KEY" >&2; exit 1; }
	$(PY) -m pytest -q -s -rs -p no:cacheprovider tests/ai/test_gemini_live.py
