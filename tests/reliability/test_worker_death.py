"""A worker that dies is retried by Ray; the retry resumes from the last checkpoint with identical numbers."""

import pytest
import torch

from sgdlab.sweep import spec
from sgdlab.sweep.expand import expand
from sgdlab.training.loop import train

from conftest import mlflow_runs, run_sgdlab, status_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray head

LONG = """
overrides: [model.depth=2, model.width=16, data.n_train=128, data.batch_size=8, optim.temperature=0.001,
            train.max_steps=300, train.stop_when_fitted=false, train.log_every=25, train.checkpoint_every=50,
            seed=0, train.dtype=float64]
"""


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(sweeps_dir, tmp_path):
    (sweeps_dir / "long.yaml").write_text(LONG)
    out = run_sgdlab("sweep", "long", "fault.kill_at_step=160", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    client, runs = mlflow_runs(tmp_path / "mlflow.db", "long")
    lost = [r for r in runs if r.info.status == "FAILED"]
    (finished,) = [r for r in runs if r.info.status == "FINISHED"]
    assert len(lost) == 1 and lost[0].data.tags["sgdlab.error"].startswith("worker lost")
    assert finished.data.tags["sgdlab.attempt"] == "2"
    assert finished.data.tags["sgdlab.resumed_from"] == f"{lost[0].info.run_id}@150"
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "train_loss")] == [175, 200, 225, 250,
                                                                                               275, 300]

    (trial,) = expand(spec.load("long").override_strings())
    torch.set_num_threads(1)  # as in the worker (resources.cpus = 1)
    reference = train(trial.config)
    for key, value in reference.metrics.items():
        assert finished.data.metrics[key] == value, key  # bit for bit
    assert status_json(tmp_path, "long")["counts"]["finished"] == 1


def test_worker_that_keeps_dying_fails_after_max_retries(sweeps_dir, tmp_path):
    (sweeps_dir / "long.yaml").write_text(LONG)
    out = run_sgdlab("sweep", "long", "fault.kill_at_step=20", "resources.max_retries=0", cwd=tmp_path)
    assert out.returncode == 1
    _, (run,) = mlflow_runs(tmp_path / "mlflow.db", "long")
    assert run.info.status == "FAILED" and "WorkerCrashedError" in run.data.tags["sgdlab.error"]
    report = status_json(tmp_path, "long")
    assert report["counts"]["failed"] == 1 and "WorkerCrashedError" in report["failed"][0]["error"]
