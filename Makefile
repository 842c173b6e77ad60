# Thin wrappers of the `sgdlab` console script. The first target on a fresh clone creates .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXP ?= smoke
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install sweep status resubmit report ui probe test bench-probe bench-overhead

install: $(VENV)/.installed

# torch is installed first and explicitly: an open range would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

sweep: install
	$(BIN)/sgdlab sweep $(EXP) $(ARGS)

status: install
	$(BIN)/sgdlab status $(EXP) $(ARGS)

resubmit: install
	$(BIN)/sgdlab resubmit $(EXP) $(ARGS)

report: install
	$(BIN)/sgdlab report $(EXP) $(ARGS)

probe: install
	$(BIN)/sgdlab probe $(RUN) $(ARGS)

ui: install
	$(BIN)/sgdlab ui

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# PyHessian is a benchmark-only comparison; --no-deps keeps it from replacing the pinned CPU torch.
bench-probe: install
	$(BIN)/python -m pip install --quiet --no-deps pyhessian==0.1
	$(BIN)/python bench/probe_bench.py

bench-overhead: install
	$(BIN)/python bench/overhead_bench.py
