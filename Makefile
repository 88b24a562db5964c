# The README's two commands, `make demo` and `make test`, and the developer loop. Both set up .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Exact versions for a reproducible environment; pyproject.toml keeps the ranges library users install with.
CONSTRAINTS := constraints.txt

.PHONY: setup test test-network demo lint format check-latest lock clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[mlops,dev]"
	touch $(STAMP)

# The whole suite, services included, one worker per core (each module on one worker: its fixtures start once);
# only the tests that download from the package index are left out.
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25 -m "not network" tests

# The tests marked `network` (the uv environment built from PyPI, about 2.5 GB the first time).
test-network: setup
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25 -m network tests

# The main job on the embedded synthetic dataset with the fast CPU experiment (minutes on 2 cores).
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" mlflow run . --env-manager local \
		-P dataset=synthetic -P overrides="experiment=cpu_demo"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Scheduled-style check: the newest releases of every dependency (no constraints) in .venv-latest, whole suite.
# When it passes, `make lock` records those versions as the new constraints.
check-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip wheel setuptools
	.venv-latest/bin/python -m pip install -q --upgrade -e ".[mlops,dev]"
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/versions.txt
	.venv-latest/bin/python -m pytest -q -x tests

lock:
	test -f .venv-latest/versions.txt || { echo "run 'make check-latest' first"; exit 2; }
	{ sed -n 1,2p $(CONSTRAINTS); grep -v -E '^(pip|setuptools|wheel)==' .venv-latest/versions.txt; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean-runs:
	rm -rf mlruns mlflow.db mlartifacts
