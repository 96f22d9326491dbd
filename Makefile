# A newcomer needs two commands (see README.md):
#   make main   # set up .venv and run the main job
#   make test   # set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.setup-stamp

.PHONY: setup main lint test bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

main: setup
	$(PY) -m tfdgmm.main_job

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bijectors.py
