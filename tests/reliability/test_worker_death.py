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
    """The retry resumes from the checkpoint at step 150 with the numbers of an uninterrupted run, and its FINISHED
    run carries the whole metric history from step 0 on (a pack member: tests/orchestration/test_packing.py)."""
    sweep = "long"
    (sweeps_dir / "long.yaml").write_text(LONG)
    out = run_sgdlab("sweep", sweep, "fault.kill_at_step=160", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    client, runs = mlflow_runs(tmp_path / "mlflow.db", sweep)
    torch.set_num_threads(1)  # as in the worker (resources.cpus = 1)
    trials = expand(spec.load(sweep).override_strings())
    assert len(runs) == 2 * len(trials)
    for trial in trials:
        mine = [r for r in runs if r.data.tags["sgdlab.trial_id"] == trial.trial_id]
        (lost,) = [r for r in mine if r.info.status == "FAILED"]
        (finished,) = [r for r in mine if r.info.status == "FINISHED"]
        assert lost.data.tags["sgdlab.error"].startswith("worker lost")
        assert finished.data.tags["sgdlab.attempt"] == "2"
        assert finished.data.tags["sgdlab.resumed_from"] == f"{lost.info.run_id}@150"
        logged = []
        reference = train(trial.config, on_log=lambda step, m: logged.append((step, m["train_loss"])))
        for key, value in reference.metrics.items():
            assert finished.data.metrics[key] == value, key  # bit for bit
        history = {run.info.status: sorted((m.step, m.value) for m in
                                           client.get_metric_history(run.info.run_id, "train_loss"))
                   for run in (lost, finished)}
        assert [step for step, _ in history["FINISHED"]] == [step for step, _ in logged] and logged[0][0] == 0
        assert [v for _, v in history["FINISHED"]] == [v for _, v in logged]  # whole, from step 0 on
        assert history["FAILED"] == history["FINISHED"][:7]  # up to its checkpoint at step 150, copied as is
    assert status_json(tmp_path, sweep)["counts"]["finished"] == len(trials)


def test_worker_that_keeps_dying_fails_after_max_retries(sweeps_dir, tmp_path):
    (sweeps_dir / "long.yaml").write_text(LONG)
    out = run_sgdlab("sweep", "long", "fault.kill_at_step=20", "resources.max_retries=0", cwd=tmp_path)
    assert out.returncode == 1
    _, (run,) = mlflow_runs(tmp_path / "mlflow.db", "long")
    assert run.info.status == "FAILED" and "WorkerCrashedError" in run.data.tags["sgdlab.error"]
    report = status_json(tmp_path, "long")
    assert report["counts"]["failed"] == 1 and "WorkerCrashedError" in report["failed"][0]["error"]
