# Thin wrappers of the `sgdlab` console script. The first target on a fresh clone creates .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXP ?= smoke
ARGS ?=
PYTEST_ARGS ?=
# make mlflow-server: a shared MLflow tracking server on PostgreSQL (the database is created if missing)
SGDLAB_PG_URI ?= postgresql+psycopg://postgres@127.0.0.1:5432/sgdlab
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts/server
# beyond loopback the server needs MLFLOW_SERVER_ARGS=--auth=basic (MLflow's basic-auth app) or --insecure-no-auth
MLFLOW_SERVER_ARGS ?=

.PHONY: install sweep status resubmit report ui probe test test-cluster mlflow-server bench-probe bench-overhead bench-pack bench-race bench-store bench-step bench-refine

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

# make ui: the most recent sweep's runs; make ui EXP=NAME: that sweep's (the URL is printed)
ui: install
	$(BIN)/sgdlab ui $(if $(filter command line,$(origin EXP)),$(EXP)) $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The cluster tests alone: server, docker/ files, and two Ray nodes against an MLflow server on PostgreSQL.
test-cluster: install
	$(BIN)/python -m pytest tests/cluster $(PYTEST_ARGS)

mlflow-server: install
	$(BIN)/python -m sgdlab.tracking.server --backend-store-uri '$(or $(SGDLAB_PG_URI),postgresql+psycopg://postgres@127.0.0.1:5432/sgdlab)' \
		--artifacts-destination '$(MLFLOW_ARTIFACTS)' --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) $(MLFLOW_SERVER_ARGS)

# PyHessian is a benchmark-only comparison; --no-deps keeps it from replacing the pinned CPU torch.
bench-probe: install
	$(BIN)/python -m pip install --quiet --no-deps pyhessian==0.1
	$(BIN)/python bench/probe_bench.py

bench-overhead: install
	$(BIN)/python bench/overhead_bench.py

bench-pack: install
	$(BIN)/python bench/pack_bench.py

# 4 drivers started together on one sweep, 10 times: prints how many trials ended with two FINISHED runs
bench-race: install
	$(BIN)/python bench/race_bench.py

# drivers on one SQLite store of a loaded machine: FAILED trials caused by the store check (goal: 0)
bench-store: install
	$(BIN)/python bench/store_load_bench.py

# steps/s of one small trial beside plain torch and numpy loops, and of packs beside a plain vmap loop
bench-step: install
	$(BIN)/python bench/step_bench.py

bench-refine: install
	$(BIN)/python bench/refine_bench.py
