"""Shared fixtures: the repository's conf/, tiny sweep files in a temporary sweeps folder, the sgdlab command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tests in this process run single-threaded, as Ray workers do (resources.cpus = 1): on a 2-core machine busy
# with Ray workers, torch's default thread pool oversubscribes the cores and every small op waits.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SGDLAB = [sys.executable, "-m", "sgdlab.cli"]


@pytest.fixture
def sweeps_dir(tmp_path, monkeypatch):
    """An empty sweeps folder used by sgdlab (in this process and in subprocesses)."""
    folder = tmp_path / "sweeps"
    folder.mkdir()
    monkeypatch.setenv("SGDLAB_SWEEPS_DIR", str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def run_sgdlab(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (cwd decides where the default store goes)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*SGDLAB, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


TINY = """
description: four tiny trials
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=200, train.log_every=20]
axes:
  model.alpha: [1, 16]
  seed: [0, 1]
"""


def mlflow_runs(store: Path, sweep: str, kind: str = "train"):
    """(client, runs of one kind) from a SQLite store, read with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(sweep)
    return client, client.search_runs([exp.experiment_id], f"tags.`sgdlab.kind` = '{kind}'")


def status_json(cwd: Path, sweep: str, *overrides: str) -> dict:
    import json

    out = run_sgdlab("status", sweep, "--json", *overrides, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
