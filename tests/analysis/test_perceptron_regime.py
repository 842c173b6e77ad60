"""analysis/perceptron_regime.py and the report's perceptron section: the SGD regime of a perceptron trial from its
params and final w_par, and the P exponents fitted on the noise-dominated runs only.

The boundary statistics are checked against the data the training draws (training.data.teacher_perceptron); the
labels and fits on synthetic records whose shares and margin counts are worked out by hand.
"""

import math

import numpy as np
import pandas as pd
import pytest

from sgdlab import numerics
from sgdlab.analysis.frames import trial_frame
from sgdlab.analysis.perceptron import p_exponents
from sgdlab.analysis.perceptron_regime import boundary_fraction, mean_abs_x1, with_regimes
from sgdlab.analysis.report import build_report
from sgdlab.params import flatten, param_text
from sgdlab.training.data import teacher_perceptron
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord

D, B, ALPHA = 8, 8, 1024.0


def test_boundary_statistics_match_the_data_drawn():
    """E|x_1| and Pr(|x_1| < eps) of the chi-depleted teacher task, against 400k points of the data set."""
    assert mean_abs_x1(0) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)
    assert mean_abs_x1(1) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-12)
    assert boundary_fraction(0, 0.1) == pytest.approx(math.erf(0.1 / math.sqrt(2)), rel=1e-12)
    assert boundary_fraction(1, 0.1) == pytest.approx(1 - math.exp(-0.1**2 / 2), rel=1e-12)
    for chi in (0.0, 1.0, 2.5):
        x, _, _, _ = teacher_perceptron({"n_train": 400_000, "n_test": 1, "seed": 0, "dim": 2, "chi": chi})
        x1 = np.abs(x[:, 0, 0, 0])
        assert x1.mean() == pytest.approx(float(mean_abs_x1(chi)), rel=0.005)
        for eps in (0.2, 1.0):
            p = float(boundary_fraction(chi, eps))
            assert np.mean(x1 < eps) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / len(x1)))  # 4 sigma


def _row(chi, P, lr, w_par, **extra) -> dict:
    return {"status": "finished", "outcome": "converged", "chi": chi, "P": P, "lr": lr, "B": B, "alpha": ALPHA,
            "d": D, "w_par": w_par, **extra}


def test_regime_labels_from_the_first_step_share_and_the_margin_points():
    """B / B* = lr E|x_1| / (sqrt(d) w_par); margin points = P Pr(|x_1| < sqrt(d) / (alpha w_par))."""
    first_step = 8 * math.sqrt(2 / math.pi) / math.sqrt(D)  # lr = 8: the first step's expected w_par, chi = 0
    eps = lambda w_par: math.sqrt(D) / (ALPHA * w_par)  # noqa: E731
    frame = pd.DataFrame([
        _row(0.0, 512, 8.0, 20 * first_step),  # share 0.05; margin 512 erf(eps / sqrt 2) = 0.0089
        _row(0.0, 512, 8.0, 5 * first_step),  # share 0.2
        _row(0.0, 8192, 8.0, 20 * first_step),  # margin 0.14: the margin still matters at this P
        _row(0.0, 8192, 8.0, 5 * first_step),  # both
        _row(0.0, 512, 8.0, np.nan),  # no teacher frame recorded
        _row(0.0, 512, 8.0, 1.0, status="failed"),
    ])
    out = with_regimes(frame)
    assert out["first_step_share"].iloc[:4].tolist() == pytest.approx([0.05, 0.2, 0.05, 0.2])
    assert out["B_star"].iloc[:2].tolist() == pytest.approx([B / 0.05, B / 0.2])
    margins = [P * math.erf(eps(w) / math.sqrt(2)) for P, w in ((512, 20 * first_step), (512, 5 * first_step),
                                                                   (8192, 20 * first_step), (8192, 5 * first_step))]
    assert out["margin_points"].iloc[:4].tolist() == pytest.approx(margins, rel=1e-12)
    assert margins[0] < 0.1 < margins[2]
    assert out["regime"].tolist() == ["noise-dominated", "large first step", "margin-limited",
                                      "large first step + margin-limited", "unknown", "unknown"]
    assert out["P_over_d"].tolist() == [64, 64, 1024, 1024, 64, 64]


def perceptron_run(chi, P, seed, data_seed, w_par, w_perp, T=1.0) -> RunRecord:
    config = {"model": {"name": "perceptron", "alpha": ALPHA}, "seed": seed,
              "optim": {"name": "sgd", "lr": B * T, "temperature": T},
              "data": {"name": "teacher_perceptron", "n_train": P, "batch_size": B, "chi": chi, "dim": D,
                       "seed": data_seed}}
    tid = f"chi{chi}-T{T}-P{P}-s{seed}-d{data_seed}"
    metrics = {"w_par": w_par, "w_perp": w_perp, "w_ratio": w_par / w_perp, "weight_delta": math.hypot(w_par, w_perp),
               "steps": 100.0}
    return RunRecord(run_id=f"{tid}#1", status="FINISHED", start_time=0, metrics=metrics,
                     params={k: param_text(v) for k, v in flatten(config).items()},
                     tags={tags.TRIAL_ID: tid, tags.KIND: "train", tags.ATTEMPT: "1", tags.OUTCOME: "converged",
                           tags.NUMERICS: str(numerics.VERSION)})


def planted_regimes():
    """chi = 1, T = 1, B = 8, d = 8: w_par = 20 sqrt(P), w_perp = 2, so the ratio ~ P^0.5 exactly, except at P = 64,
    where w_par = 2.2 (the first step, lr E|x_1| / sqrt(d) = 3.5, is more than its share): left out. chi = 0: w_par =
    4 and w_perp = 2 at every P, all with large first steps (share 0.56 at T = 1), and at P = 256 0.14 points in the
    margin; at T = 1 three P (a fit over all regimes, exponent 0), at T = 2 two P (no fit)."""
    runs = []
    for seed in range(2):
        for data_seed in range(2):
            runs += [perceptron_run(1.0, P, seed, data_seed, 20 * math.sqrt(P), 2.0) for P in (256, 512, 1024)]
            runs.append(perceptron_run(1.0, 64, seed, data_seed, 2.2, 2.0))
            runs += [perceptron_run(0.0, P, seed, data_seed, 4.0, 2.0) for P in (64, 128, 256)]
            runs += [perceptron_run(0.0, P, seed, data_seed, 4.0, 2.0, T=2.0) for P in (64, 128)]
    return runs


def test_exponents_are_fitted_on_the_noise_dominated_runs_only():
    frame = trial_frame(planted_regimes())
    labelled = with_regimes(frame)
    chi1, chi0 = labelled[labelled["chi"] == 1], labelled[labelled["chi"] == 0]
    assert (chi1.loc[chi1["P"] >= 256, "regime"] == "noise-dominated").all()
    assert (chi1.loc[chi1["P"] < 256, "regime"] == "large first step").all()
    assert (chi0.loc[chi0["P"] < 256, "regime"] == "large first step").all()
    assert (chi0.loc[chi0["P"] == 256, "regime"] == "large first step + margin-limited").all()
    table = p_exponents(frame).set_index(["metric", "chi"])
    assert table.loc[("w_ratio", 1.0), "exponent"] == pytest.approx(0.5, abs=1e-9)  # P = 64 would pull it off 0.5
    row = table.loc[("w_ratio", 1.0)]
    assert (row["n_replicas"], row["n_P"], row["n_left_out"], row["points"]) == (4, 3, 4, "noise-dominated")
    assert (row["P_over_d_min"], row["P_over_d_max"], row["all_regimes"]) == (32, 128, False)
    flagged = table.loc[("w_ratio", 0.0)]  # no noise-dominated run: every converged run, flagged
    assert flagged["all_regimes"] and flagged["points"] == ("all regimes: 8 large first step, 4 large first step + "
                                                            "margin-limited")
    assert flagged["exponent"] == pytest.approx(0, abs=1e-9) and flagged["T"] == 1 and flagged["n_left_out"] == 0
    assert len(table) == 4  # chi = 0 at T = 2 has two P: no fit


def test_report_gives_every_trial_its_regime(tmp_path):
    report = build_report(planted_regimes(), "perceptron", tmp_path)
    regimes = pd.read_csv(tmp_path / "perceptron_regimes.csv")
    assert len(regimes) == 36 and {"regime", "first_step_share", "B_star", "margin_points", "data.seed"} <= set(regimes)
    assert ("12 noise-dominated, 20 large first step, 4 large first step + margin-limited of 36 trials."
            in report.markdown)
    assert "| 1 | 1 | 64 | 8 | 0 / 4 |" in report.markdown  # the per-(chi, T, P) table
    assert "| 1 | 1 | 256 | 32 | 4 / 4 |" in report.markdown
    assert "| 4 | 3 | 32-128 | noise-dominated (4 converged runs in other regimes left out) |" in report.markdown
    assert "| 4 | 3 | 8-32 | all regimes: 8 large first step, 4 large first step + margin-limited |" in report.markdown
    assert "- chi = 0, T = 2: no fit, no replica has converged runs at 3 or more P." in report.markdown
    assert report.numbers["summary/perceptron_exponent/w_ratio/chi 1/T 1"] == pytest.approx(0.5)
    assert report.numbers["summary/perceptron_exponent/w_ratio/chi 0/T 1/all regimes"] == pytest.approx(0, abs=1e-9)
