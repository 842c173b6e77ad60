"""Shared fixtures: the repository's conf/, tiny sweep files in a temporary sweeps folder, the sgdlab command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
