"""Probes as jobs of a sweep, through a real Ray and a real MLflow store."""

import shutil

import pytest

from conftest import REPO, mlflow_runs, run_sgdlab

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray head

PROBED = """
overrides:
  - data.n_train=64
  - data.batch_size=8
  - model.depth=1
  - model.width=8
  - loss=mse
  - optim.lr=0.5
  - train.max_steps=120
  - train.stop_when_fitted=false
  - train.log_every=40
  - probe.at_end=true
  - probe.every=40
  - probe.top_k=2
  - probe.trace_samples=8
  - probe.batch_sizes=[8]
  - probe.n_batches=3
axes:
  seed: [0, 1]
"""


def test_probe_smoke_records_probe_runs_and_sharpness_trajectories(sweeps_dir, tmp_path):
    shutil.copy(REPO / "sweeps" / "probe_smoke.yaml", sweeps_dir / "probe_smoke.yaml")
    out = run_sgdlab("sweep", "probe_smoke", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    client, trains = mlflow_runs(tmp_path / "mlflow.db", "probe_smoke")
    _, probes = mlflow_runs(tmp_path / "mlflow.db", "probe_smoke", kind="probe")
    assert len(trains) == 4 and len(probes) == 4
    assert {r.info.status for r in trains + probes} == {"FINISHED"}
    by_train = {r.info.run_id: r for r in trains}
    for probe in probes:
        train = by_train[probe.data.tags["sgdlab.train_run"]]
        assert probe.data.tags["sgdlab.trial_id"] == train.data.tags["sgdlab.trial_id"]
        assert probe.data.tags["sgdlab.matrix"] == "full"
        assert probe.data.tags["sgdlab.normalization"] == "mean over examples"
        assert probe.data.tags["sgdlab.probe_data"] == "first 128 training points in 1 batches"
        for key in ("sharpness", "hessian_trace", "hessian_trace_se", "hessian_top_k/1", "hessian_top_k/3",
                    "batch_lambda_max/B8", "batch_lambda_max/B32"):
            assert key in probe.data.metrics, key
        m = probe.data.metrics
        assert m["hessian_top_k/1"] >= m["hessian_top_k/2"] >= m["hessian_top_k/3"] > 0
        assert m["sharpness"] == m["hessian_top_k/1"]
        assert m["hessian_trace"] > m["sharpness"]
        history = client.get_metric_history(train.info.run_id, "sharpness")
        assert [h.step for h in history] == [0, 50, 100, 150, 200, 250, 300]
        # the probe measures the final parameters: the last point of the trajectory, to Lanczos' tolerance
        assert history[-1].value == pytest.approx(m["sharpness"], rel=1e-5)


def test_adding_an_end_probe_to_a_finished_sweep_runs_only_the_probes(sweeps_dir, tmp_path):
    (sweeps_dir / "probed.yaml").write_text(PROBED)
    plain = run_sgdlab("sweep", "probed", "probe.at_end=false", "probe.every=null", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    out = run_sgdlab("sweep", "probed", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "0 to run" in out.stderr and "2 end probes of finished trials to run" in out.stderr
    client, trains = mlflow_runs(tmp_path / "mlflow.db", "probed")
    _, probes = mlflow_runs(tmp_path / "mlflow.db", "probed", kind="probe")
    assert len(trains) == 2 and len(probes) == 2 and {p.info.status for p in probes} == {"FINISHED"}
    assert {p.data.tags["sgdlab.train_run"] for p in probes} == {t.info.run_id for t in trains}
    again = run_sgdlab("sweep", "probed", cwd=tmp_path)
    assert "nothing to run" in again.stderr

    measured = run_sgdlab("probe", trains[0].info.run_id, "probe.top_k=4", "probe.slq_starts=2", "probe.noise=true",
                          cwd=tmp_path)
    assert measured.returncode == 0, measured.stderr
    assert "hessian_top_k/4" in measured.stdout and "noise_scale" in measured.stdout
    _, probes = mlflow_runs(tmp_path / "mlflow.db", "probed", kind="probe")
    newest = max(probes, key=lambda r: r.info.start_time)
    assert newest.data.params["probe.top_k"] == "4"
    m = newest.data.metrics
    assert m["noise_scale"] == pytest.approx(m["noise_trace"] / m["grad_norm_sq"], rel=1e-6)
    assert m["curvature_ratio"] == pytest.approx(m["hessian_trace"] / m["sharpness"], rel=1e-6)
    assert 0 < m["noise_top_share"] < 1
    assert sorted(a.path for a in client.list_artifacts(newest.info.run_id, "spectrum")) == [
        "spectrum/density.csv", "spectrum/slq.json"]
    refused = run_sgdlab("probe", trains[0].info.run_id, "model.alpha=2", cwd=tmp_path)
    assert refused.returncode == 2
