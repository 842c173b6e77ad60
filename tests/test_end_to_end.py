"""A tiny sweep through the real command, a real local Ray and a real SQLite MLflow store, read back."""

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sgdlab.sweep import spec
from sgdlab.sweep.expand import expand

from conftest import run_sgdlab

pytestmark = pytest.mark.slow

TINY = """
description: four tiny trials
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=200, train.log_every=20]
axes:
  model.alpha: [1, 16]
  seed: [0, 1]
"""


def train_runs(store, sweep="tiny"):
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(sweep)
    return client, client.search_runs([exp.experiment_id], "tags.`sgdlab.kind` = 'train'")


def status(cwd):
    out = run_sgdlab("status", "tiny", "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sweep_records_every_trial_and_skips_finished_ones(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    work = tmp_path / "work"
    work.mkdir()
    assert status(work)["counts"]["pending"] == 4 and not (work / "mlflow.db").exists()

    out = run_sgdlab("sweep", "tiny", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "4 to run" in out.stderr and "4 finished" in out.stderr

    trials = {t.trial_id: t for t in expand(spec.load("tiny").override_strings())}
    client, runs = train_runs(work / "mlflow.db")
    assert len(runs) == 4 and {r.data.tags["sgdlab.trial_id"] for r in runs} == set(trials)
    (sweep_run,) = client.search_runs([runs[0].info.experiment_id], "tags.`sgdlab.kind` = 'sweep'")
    for run in runs:
        tags, trial = run.data.tags, trials[run.data.tags["sgdlab.trial_id"]]
        assert run.info.status == "FINISHED"
        assert tags["sgdlab.sweep"] == "tiny" and tags["sgdlab.attempt"] == "1"
        assert tags["sgdlab.outcome"] in ("converged", "max_steps")
        assert tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert float(tags["sgdlab.heartbeat"]) > 0 and "sgdlab.git_sha" in tags
        assert run.info.run_name == f"alpha={trial.swept['model.alpha']} seed={trial.swept['seed']}"
        assert run.data.params["data.n_train"] == "64" and run.data.params["model.alpha"] == str(
            trial.config["model"]["alpha"])
        assert float(run.data.params["optim.lr"]) == pytest.approx(0.01 * 8 * 8)
        for metric in ("test_error", "weight_change", "train_time", "train_loss", "steps"):
            assert metric in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert len(history) >= 2 and history[-1].step == int(run.data.metrics["steps"])
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert yaml.safe_load(open(local)) == trial.config

    report = status(work)
    assert report["trials"] == 4 and report["counts"]["finished"] == 4 and report["failed"] == []
    assert sum(report["outcomes"].values()) == 4

    again = run_sgdlab("sweep", "tiny", cwd=work)
    assert again.returncode == 0 and "4 already finished" in again.stderr and "nothing to run" in again.stderr
    assert len(train_runs(work / "mlflow.db")[1]) == 4


def test_failed_trials_are_recorded_then_rerun_as_new_attempts(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    out = run_sgdlab("sweep", "tiny", "fault.raise_at_step=3", "fault.seeds=[1]", cwd=tmp_path)
    assert out.returncode == 1 and "make resubmit EXP=tiny" in out.stderr
    client, runs = train_runs(tmp_path / "mlflow.db")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 4 and len(failed) == 2
    for run in failed:
        assert run.data.params["seed"] == "1"
        assert run.data.tags["sgdlab.error"] == "InjectedFault: fault.raise_at_step=3 (injected)"
        assert run.data.tags["sgdlab.outcome"] == "error"
        tb = client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))
        assert "InjectedFault" in open(tb).read()
    report = status(tmp_path)
    assert report["counts"]["failed"] == 2 and report["counts"]["finished"] == 2
    assert {f["trial_id"] for f in report["failed"]} == {r.data.tags["sgdlab.trial_id"] for r in failed}

    rerun = run_sgdlab("sweep", "tiny", cwd=tmp_path)  # the fault settings are not inherited
    assert rerun.returncode == 0, rerun.stderr
    _, runs = train_runs(tmp_path / "mlflow.db")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(runs) == 6 and len(finished) == 4
    assert len({r.data.tags["sgdlab.trial_id"] for r in finished}) == 4
    assert sorted(r.data.tags["sgdlab.attempt"] for r in finished) == ["1", "1", "2", "2"]
    assert status(tmp_path)["counts"]["finished"] == 4
