"""A tiny sweep through the real command, a real local Ray and a real SQLite MLflow store, read back."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from sgdlab import numerics
from sgdlab.sweep import spec
from sgdlab.params import param_text
from sgdlab.sweep.expand import expand
from sgdlab.tracking.datasets import dataset_record
from sgdlab.tracking.tags import VIEW_TAG

from conftest import SGDLAB, TINY, mlflow_runs, run_sgdlab, status_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray head


def test_sweep_records_every_trial_and_skips_finished_ones(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    work = tmp_path / "work"
    work.mkdir()
    assert status_json(work, "tiny")["counts"]["pending"] == 4 and not (work / "mlflow.db").exists()

    (work / "reports").write_text("not a folder")  # the report fails: one line, and the sweep does not
    out = run_sgdlab("sweep", "tiny", "report.auto=true", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "4 to run" in out.stderr and "4 finished" in out.stderr
    assert "report not written (ConfigError: reports/tiny: reports is not a folder); write it with: make report " \
           "EXP=tiny" in " ".join(out.stderr.split())

    trials = {t.trial_id: t for t in expand(spec.load("tiny").override_strings())}
    client, runs = mlflow_runs(work / "mlflow.db", "tiny")
    assert len(runs) == 4 and {r.data.tags["sgdlab.trial_id"] for r in runs} == set(trials)
    assert len(client.search_runs([runs[0].info.experiment_id], "params.`model.alpha` = '1'")) == 2
    # The UI opens the experiment in its model-training view, with the trials view that `sgdlab ui` links to.
    experiment = client.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[VIEW_TAG])
    assert view["orderByKey"] == "tags.`mlflow.runName`" and "params.`model.alpha`" in view["selectedColumns"]
    assert "params.`seed`" in view["selectedColumns"] and "metrics.`test_error`" in view["selectedColumns"]
    (sweep_run,) = client.search_runs([runs[0].info.experiment_id], "tags.`sgdlab.kind` = 'sweep'")
    # The sweep run ends with the driver, its trial counts as metrics (it is RUNNING only while one works).
    assert sweep_run.info.status == "FINISHED"
    assert {k: v for k, v in sweep_run.data.metrics.items() if k in ("trials_finished", "trials_failed")} == {
        "trials_finished": 4.0, "trials_failed": 0.0}
    for run in runs:
        tags, trial = run.data.tags, trials[run.data.tags["sgdlab.trial_id"]]
        assert run.info.status == "FINISHED"
        assert tags["sgdlab.sweep"] == "tiny" and tags["sgdlab.attempt"] == "1"
        assert tags["sgdlab.outcome"] in ("converged", "max_steps")
        assert tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert float(tags["sgdlab.heartbeat"]) > 0 and "sgdlab.git_sha" in tags
        # MLflow's own tags: the UI's Source, Version and User columns
        assert tags["mlflow.source.name"] == "sgdlab" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and run.info.user_id == tags["mlflow.user"]
        assert tags.get("mlflow.source.git.commit", "") == tags["sgdlab.git_sha"]
        assert run.info.run_name == f"alpha={trial.swept['model.alpha']} seed={trial.swept['seed']} P=64"
        # params in one number format, the one of the run name: a filter by a named value finds the run
        assert run.data.params["data.n_train"] == "64" and run.data.params["model.alpha"] == trial.swept[
            "model.alpha"] == param_text(trial.config["model"]["alpha"]) in ("1", "16")
        (data,) = run.inputs.dataset_inputs  # the UI's Dataset column
        assert (data.dataset.name, data.dataset.digest) == ("digits_parity", dataset_record(trial.config).digest)
        assert float(run.data.params["optim.lr"]) == pytest.approx(0.01 * 8 * 8)
        for metric in ("test_error", "weight_change", "train_time", "train_loss", "steps"):
            assert metric in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert len(history) >= 2 and history[-1].step == int(run.data.metrics["steps"])
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert yaml.safe_load(open(local)) == trial.config

    report = status_json(work, "tiny")
    assert report["trials"] == 4 and report["counts"]["finished"] == 4 and report["failed"] == []
    assert sum(report["outcomes"].values()) == 4

    again = run_sgdlab("sweep", "tiny", cwd=work)
    assert again.returncode == 0 and "4 already finished" in again.stderr and "nothing to run" in again.stderr
    assert len(mlflow_runs(work / "mlflow.db", "tiny")[1]) == 4

    # Runs of another numerics version are outdated: status counts them, the sweep reruns them as new attempts.
    assert {r.data.tags["sgdlab.numerics"] for r in runs} == {str(numerics.VERSION)}
    old = sorted(trials)[:2]
    with sqlite3.connect(work / "mlflow.db") as db:
        db.execute("UPDATE tags SET value = '0' WHERE key = 'sgdlab.numerics' AND run_uuid IN (SELECT run_uuid "
                   f"FROM tags WHERE key = 'sgdlab.trial_id' AND value IN ('{old[0]}', '{old[1]}'))")
    assert status_json(work, "tiny")["counts"] == {"finished": 2, "failed": 0, "running": 0, "stale": 0,
                                                        "pending": 0, "outdated": 2}
    rerun = run_sgdlab("sweep", "tiny", cwd=work)
    assert rerun.returncode == 0 and "2 to run (0 failed or stale before, 2 outdated)" in rerun.stderr
    assert status_json(work, "tiny")["counts"]["finished"] == 4
    runs = mlflow_runs(work / "mlflow.db", "tiny")[1]
    assert sorted((r.data.tags["sgdlab.trial_id"], r.data.tags["sgdlab.attempt"], r.data.tags["sgdlab.numerics"])
                  for r in runs if r.data.tags["sgdlab.trial_id"] in old) == sorted(
        [(tid, "1", "0") for tid in old] + [(tid, "2", str(numerics.VERSION)) for tid in old])


def test_report_writes_files_and_attaches_them_to_the_sweep_run(sweeps_dir, tmp_path):
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    missing = run_sgdlab("report", "tiny", cwd=tmp_path)
    assert missing.returncode == 2 and "no runs of sweep 'tiny'" in missing.stderr
    out = run_sgdlab("sweep", "tiny", "model.alpha=1", "report.auto=true", cwd=tmp_path)  # a partial sweep
    assert out.returncode == 0, out.stderr  # ends with its report (report.auto)
    assert "report of 2 train and 0 probe runs in reports/tiny/" in " ".join(out.stderr.split())
    folder = tmp_path / "reports" / "tiny"
    assert (folder / "summary.csv").is_file()
    summary = (folder / "summary.md").read_text()
    assert "2 trials recorded: 2 finished" in summary
    pngs = sorted(p.name for p in folder.glob("*.png"))
    client, runs = mlflow_runs(tmp_path / "mlflow.db", "tiny", kind="sweep")
    (sweep_run,) = runs
    attached = sorted(f.path.split("/")[-1] for f in client.list_artifacts(sweep_run.info.run_id, "report"))
    assert attached == sorted(pngs + ["summary.csv", "summary.md"])
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dashboard_serves_runs_and_report(tmp_path, sweep_run.info.run_id, pngs)


def dashboard_serves_runs_and_report(store_dir, sweep_run_id, pngs):
    """`sgdlab ui` on the store: the REST API lists the trial runs and serves the report files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    server = subprocess.Popen([*SGDLAB, "ui", "--port", str(port)], cwd=store_dir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(endpoint, **query):
        url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
        return urllib.request.urlopen(url, timeout=10).read()

    try:
        deadline = time.time() + 90
        while True:
            try:
                experiment = json.loads(get("/api/2.0/mlflow/experiments/get-by-name", experiment_name="tiny"))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        exp_id = experiment["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [exp_id], "filter": "tags.`sgdlab.kind` = 'train'"}).encode())
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert len(runs) == 2 and all(r["info"]["status"] == "FINISHED" for r in runs)
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == ["seed=0 P=64", "seed=1 P=64"]  # the swept values (alpha is fixed here), and P
        summary = get("/get-artifact", path="report/summary.md", run_uuid=sweep_run_id).decode()
        assert summary.startswith("# sgdlab report: tiny")
        for png in pngs:
            assert get("/get-artifact", path=f"report/{png}", run_uuid=sweep_run_id)[:4] == b"\x89PNG"
        assert b"<html" in get("/").lower()  # the dashboard page itself
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
