"""Reading artifacts back: checkpoints and recorded configs of finished or failed runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from sgdlab.tracking.store import client


def download_bytes(uri: str, run_id: str, artifact_file: str) -> bytes | None:
    """An artifact's bytes, or None if the run has no such artifact."""
    mlflow = client(uri)
    folder, _, name = artifact_file.rpartition("/")
    listed = {Path(f.path).name for f in mlflow.list_artifacts(run_id, folder or None)}
    if name not in listed:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(mlflow.download_artifacts(run_id, artifact_file, tmp)).read_bytes()


def recorded_config(uri: str, run_id: str) -> dict:
    """The resolved config a run was started with (its config.yaml artifact)."""
    data = download_bytes(uri, run_id, "config.yaml")
    if data is None:
        raise FileNotFoundError(f"run {run_id} has no config.yaml artifact")
    return yaml.safe_load(data)
