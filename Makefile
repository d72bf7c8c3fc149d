# One pinned set-up for everything: .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test test-fast lint demo demo-seeds demo-table clean-demo benchmark

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Everything (what CI runs): the linter, then every test.
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# Every test not marked slow: the edit-test loop (under a minute on 2 cores).
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

lint: venv
	$(PY) -m ruff check .

demo: venv
	$(PY) -m demo

# The demo over training seeds 0 1 2 (same data), both evaluation modes, mean ± std in demo_output/seeds/summary.md.
demo-seeds: venv
	$(PY) -m demo.seeds

# The paper's six rows (SPNet, SPNet-c, ZS3Net, ZS3Net+ST, CaGNet, CaGNet+ST) on the demo: demo_output/table.{json,md},
# demo_output/table_predictions.png. Reuses make demo's CaGNet runs when they are there.
demo-table: venv
	$(PY) -m demo.table

clean-demo:
	rm -rf dataset/demo Results/demo demo_output

benchmark: venv
	$(PY) -m tools.benchmark
