"""Shared fixtures: the repository's conf/, tiny sweep files in a temporary sweeps folder, the sgdlab command,
and one Ray head for the end-to-end tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Tests in this process run single-threaded, as Ray workers do (resources.cpus = 1): on a 2-core machine busy
# with Ray workers, torch's default thread pool oversubscribes the cores and every small op waits.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SGDLAB = [sys.executable, "-m", "sgdlab.cli"]
RAY_SOFT_LIMIT = 6  # idle workers the head keeps (test_sweep_miniatures runs 3 sweeps at a time)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """(driver environment, GCS address) of a Ray head with 2 CPUs, started once for the session's end-to-end
    tests (a local Ray per `sgdlab sweep` costs ~6 s to start and stop) and stopped by process id: never
    `ray stop`, which would stop every Ray on the machine. Its processes carry a token of their own."""
    from cluster.cluster_helpers import RayNode, free_ports, kill, with_env_value

    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "SGDLAB_SHIP_PACKAGE": "0",  # the head's workers import this checkout's sgdlab already
           # keep idle workers of sweeps running side by side (by default Ray keeps as many as CPUs and kills
           # the others' workers, which then start again, importing torch and mlflow, for their next task)
           "RAY_num_workers_soft_limit": str(RAY_SOFT_LIMIT)}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "SGDLAB_SWEEPS_DIR"):
        env.pop(key, None)
    gcs, agent = free_ports(2)
    temp = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    head = RayNode("head", env, ["--head", f"--port={gcs}", f"--dashboard-agent-listen-port={agent}",
                                 "--num-cpus=2", "--include-dashboard=false"], temp, tmp_path_factory.mktemp("ray"))
    try:
        head.wait_started()
        yield env, f"127.0.0.1:{gcs}"
    finally:
        head.stop()
        kill(with_env_value(token))  # workers a stopped raylet left behind
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def shared_ray(ray_head, monkeypatch):
    """`sgdlab` commands of this test join the session's Ray head (through RAY_ADDRESS) instead of starting
    a local Ray each."""
    env, address = ray_head
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED", "SGDLAB_SHIP_PACKAGE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("RAY_ADDRESS", address)
    return address


@pytest.fixture
def sweeps_dir(tmp_path, monkeypatch):
    """An empty sweeps folder used by sgdlab (in this process and in subprocesses)."""
    folder = tmp_path / "sweeps"
    folder.mkdir()
    monkeypatch.setenv("SGDLAB_SWEEPS_DIR", str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


NO_REPORT = "report.auto=false"  # a report costs ~7 s of a sweep; the tests of the report ask for it


def without_report(args) -> list[str]:
    """A sweep's or resubmit's arguments with report.auto=false added, unless they set report.* themselves."""
    args = list(args)
    if args[:1] in (["sweep"], ["resubmit"]) and not any(a.startswith("report.") for a in args):
        args.append(NO_REPORT)
    return args


def run_sgdlab(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (cwd decides where the default store goes); sweeps skip their
    report unless `args` set report.auto."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*SGDLAB, *without_report(args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


TINY = """
description: four tiny trials
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=200, train.log_every=20]
axes:
  model.alpha: [1, 16]
  seed: [0, 1]
"""


def idle(path: Path) -> None:
    """Leave the store at `path` as a store no connection has open: its write-ahead log checkpointed into the file
    and removed (this process's MLflow keeps a connection open, which keeps the log)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for side in path.parent.glob(f"{path.name}-*"):
        side.unlink()


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
