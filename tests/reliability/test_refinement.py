"""Refinement end to end (real `sgdlab sweep` processes, Ray, an MLflow store): bisection of the learning rate of
full-batch gradient descent on linear least squares, whose stability boundary is known exactly. GD on a quadratic
with Hessian H diverges iff lr > 2 / lambda_max(H); here F = alpha x.(w_c - w0_c) / sqrt(d) per class c and the
loss is 1/2 sum_c (F_c - onehot_c)^2 averaged over the P points, so H = alpha^2 X^T X / (P d) in each class block.
"""

import json
import math

import torch

from conftest import mlflow_runs, run_sgdlab, status_json

OVERRIDES = ["data=teacher_perceptron", "data.dim=8", "data.n_train=32", "data.batch_size=32", "model=perceptron",
             "model.alpha=1", "loss=mse", "optim=sgd", "train.dtype=float64", "train.max_steps=400",
             "train.stop_when_fitted=false", "train.log_every=100", "train.divergence_loss=1.0e+6",
             "resources.cpus=1"]
TOLERANCE = 0.1


def gd_boundary() -> float:
    """2 / lambda_max(H), from the trial's own data in float64 (dense)."""
    from sgdlab.config.compose import Composer
    from sgdlab.training.problem import load_data

    data = load_data(Composer()([*OVERRIDES, "optim.lr=0.1"]))
    x = data.x_train.double().reshape(len(data.x_train), -1)
    n, d = x.shape
    return float(2 / torch.linalg.eigvalsh(x.T @ x / (n * d)).max())


def sweep_file(grid: list[float]) -> str:
    return "\n".join(["description: GD on least squares, lr bisected to its stability boundary", "overrides:",
                      *(f"- {o}" for o in OVERRIDES), "axes:", f"  optim.lr: [{', '.join(f'{g!r}' for g in grid)}]",
                      "  seed: [0]", "refine:", "  axis: optim.lr", "  criterion: outcome == diverged",
                      f"  tolerance: {TOLERANCE}", ""])


def test_bisection_finds_the_gd_stability_boundary_and_an_interrupted_refinement_resumes(sweeps_dir, tmp_path,
                                                                                          shared_ray):
    boundary = gd_boundary()
    grid = [boundary * 2**0.3 * 4.0**k for k in (-2, -1, 0, 1)]  # the crossing lies in a bracket of factor 4
    (sweeps_dir / "gd.yaml").write_text(sweep_file(grid))
    # Stopped after 2 rounds (the budget), as an interrupted driver: 4 grid trials and 2 midpoints.
    first = run_sgdlab("sweep", "gd", "refine.max_rounds=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "refine round 2: 1 trial" in first.stderr and "refine round 3" not in first.stderr
    assert "budget" in first.stdout
    # Rerun: the two rounds are replayed from the records, two more run, and the bracket is located.
    second = run_sgdlab("sweep", "gd", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "4 already finished (skipped)" in second.stderr
    assert second.stderr.count("refine round") == 2, second.stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "gd")
    trials = [r.data.tags["sgdlab.trial_id"] for r in runs]
    assert len(trials) == 8 and len(set(trials)) == 8  # no trial ran twice
    assert all(r.info.status == "FINISHED" for r in runs)
    (bracket,) = status_json(tmp_path, "gd")["refine"]["brackets"]
    lower, upper = bracket["lower"], bracket["upper"]
    assert bracket["status"] == "located" and bracket["rounds"] == 4 and bracket["trials"] == 8
    assert upper / lower <= 1 + TOLERANCE + 1e-9
    # 400 steps tell divergence from convergence to within ~1% of the boundary (growth (1 + 2 delta)^800)
    assert lower < boundary * 1.01 and upper > boundary / 1.01, (lower, boundary, upper)
    # Recorded on the sweep's run: the table and one metric per bracket end.
    client, (sweep_run,) = mlflow_runs(tmp_path / "mlflow.db", "gd", kind="sweep")
    assert sweep_run.data.metrics["refine/all/upper"] == upper
    assert math.isclose(sweep_run.data.metrics["refine/all/estimate"], math.sqrt(lower * upper))
    table = client.download_artifacts(sweep_run.info.run_id, "refine/brackets.csv", str(tmp_path))
    assert "located" in open(table).read()
    report = run_sgdlab("report", "gd", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "refine_brackets.csv" in report.stderr
    assert json.loads(json.dumps(bracket)) == bracket  # status --json is plain JSON (no NaN)
