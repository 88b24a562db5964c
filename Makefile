# The two commands of the README: `make demo` and `make test`. Both set up .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch/torchvision pinned to the releases this machine ships on disk (see README).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[mlops,dev]" $(TORCH_PINS)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

# The main job on the embedded synthetic dataset with the fast CPU experiment (minutes on 2 cores).
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" mlflow run . --env-manager local \
		-P dataset=synthetic -P overrides="experiment=cpu_demo"

clean-runs:
	rm -rf mlruns mlflow.db mlartifacts
