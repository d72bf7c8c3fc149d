# One pinned set-up for everything: .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo clean-demo benchmark

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) tools/run_demo.py

clean-demo:
	rm -rf dataset/demo Results/demo demo_output

benchmark: venv
	$(PY) tools/benchmark.py
