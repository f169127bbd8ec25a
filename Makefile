# make install | lint | format | test | stack | demo | bench | router-accuracy
# Everything runs from the project's own virtualenv (.venv), built from the pinned
# requirements on first use, so a fresh clone needs only python3 and make.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_PATHS := shared functions infra tests scripts client

.PHONY: install lint format test unit stack demo bench router-accuracy clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

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
test: lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

stack: install
	$(PY) -m infra.local.stack

demo: install
	$(PY) -m infra.local.demo

bench: install
	$(PY) scripts/bench.py

# incident detection and root cause on the synthetic fleet and on the held-out labelled fleet
# (tests/data/heldout_*.json, written before tuning), also with its server ids shuffled/reversed,
# and on 40 generated stress fleets with the confidence calibration
quality: install
	$(PY) scripts/quality.py -v --generated 40

# the labelled set the router's cues were tuned on, then a held-out set written afterwards
router-accuracy: install
	$(PY) scripts/router_accuracy.py tests/data/router_labelled.jsonl
	$(PY) scripts/router_accuracy.py tests/data/router_heldout.jsonl

clean:
	rm -rf $(VENV) .local build .pytest_cache .mypy_cache .ruff_cache
