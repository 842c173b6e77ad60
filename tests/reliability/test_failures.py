"""A trial that raises is recorded and the others go on; resubmit reruns exactly the failed ones."""

import sqlite3

import pytest

from conftest import TINY, mlflow_runs, run_sgdlab, status_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray head


def dump(store) -> list[str]:
    """Every row of a SQLite store, as SQL (the log of a store in write-ahead-log mode included)."""
    with sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True) as db:
        return list(db.iterdump())


def test_raise_is_recorded_then_resubmit_reruns_exactly_the_failed(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    out = run_sgdlab("sweep", "tiny", "fault.raise_at_step=3", "fault.seeds=[1]", cwd=tmp_path)
    assert out.returncode == 1 and "make resubmit EXP=tiny" in out.stderr and "2 failed" in out.stderr
    client, runs = mlflow_runs(tmp_path / "mlflow.db", "tiny")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 4 and len(failed) == 2
    for run in failed:
        assert run.data.params["seed"] == "1"
        assert run.data.tags["sgdlab.error"] == "InjectedFault: fault.raise_at_step=3 (injected)"
        assert run.data.tags["sgdlab.outcome"] == "error"
        tb = client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))
        assert "InjectedFault" in open(tb).read() and "Traceback" in open(tb).read()
    report = status_json(tmp_path, "tiny")
    assert report["counts"]["failed"] == 2 and report["counts"]["finished"] == 2
    assert {f["trial_id"] for f in report["failed"]} == {r.data.tags["sgdlab.trial_id"] for r in failed}

    refused = run_sgdlab("resubmit", "tiny", "model.alpha=2", cwd=tmp_path)
    assert refused.returncode == 2 and "only single values of" in refused.stderr
    unknown = run_sgdlab("resubmit", "tiny", "--trial", "ffffffffffff", cwd=tmp_path)
    assert unknown.returncode == 2 and "no such trial" in unknown.stderr
    store = dump(tmp_path / "mlflow.db")
    for bad, message in (("resources.cpus=-1", "resources.cpus: must be >= 0, got -1.0"),
                         ("exec.pack_size=0", "exec.pack_size: must be >= 1 or auto, got 0"),
                         ("probe.top_k=0", "probe.top_k: must be >= 1, got 0")):
        out = run_sgdlab("resubmit", "tiny", bad, cwd=tmp_path)  # range-checked before Ray starts
        assert out.returncode == 2 and out.stderr == f"sgdlab: error: {message}\n", out.stderr
    assert dump(tmp_path / "mlflow.db") == store  # nothing written

    rerun = run_sgdlab("resubmit", "tiny", "resources.cpus=1", cwd=tmp_path)  # the fault is not inherited
    assert rerun.returncode == 0, rerun.stderr
    assert "2 failed or stale trials to rerun" in rerun.stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "tiny")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(runs) == 6 and len(finished) == 4
    assert len({r.data.tags["sgdlab.trial_id"] for r in finished}) == 4
    reruns = [r for r in finished if r.data.tags["sgdlab.attempt"] == "2"]
    assert len(reruns) == 2 and all(r.data.params["seed"] == "1" for r in reruns)
    assert all(r.data.params["fault.raise_at_step"] == "None" for r in reruns)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {runs[0].data.tags["mlflow.parentRunId"]}
    assert status_json(tmp_path, "tiny")["counts"]["finished"] == 4

    nothing = run_sgdlab("resubmit", "tiny", cwd=tmp_path)
    assert nothing.returncode == 0 and "0 failed or stale trials" in nothing.stderr


def test_divergence_is_a_finished_result_never_retried(sweeps_dir, tmp_path):
    (sweeps_dir / "hot.yaml").write_text(
        "overrides: [loss=mse, model.depth=1, model.width=8, data.n_train=64, optim.lr=1.0e+6, seed=0]\n")
    out = run_sgdlab("sweep", "hot", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _, (run,) = mlflow_runs(tmp_path / "mlflow.db", "hot")
    assert run.info.status == "FINISHED" and run.data.tags["sgdlab.outcome"] == "diverged"
    assert status_json(tmp_path, "hot")["outcomes"]["diverged"] == 1
    again = run_sgdlab("sweep", "hot", cwd=tmp_path)
    assert "nothing to run" in again.stderr


def test_a_progress_poll_that_cannot_read_the_store_keeps_its_last_answer(monkeypatch):
    """The progress bar's poll of the store (scheduler.live_ended) must never stop a sweep: SQLite answered
    'disk I/O error' to it under load while every trial kept running."""
    from types import SimpleNamespace

    from sgdlab.orchestration import scheduler

    def unreadable(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(scheduler, "ended_since", unreadable)
    last = {"a1b2c3": "FINISHED"}
    assert scheduler.live_ended(SimpleNamespace(uri="sqlite:////nowhere/mlflow.db", sweep="s"), 0, last) == last
