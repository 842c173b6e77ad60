"""analysis/: trial frames, seed averages, power-law and T_c fits, phase diagrams and the sweep report.

Synthetic run records of known shape (no MLflow); every check compares with an answer worked out by hand.
"""

import math
from dataclasses import replace
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sgdlab.analysis.fits import (crossing_temperature, departure_temperature, fit_power_law, fit_product_law,
                                  plateau_crossing)
from sgdlab.analysis.frames import aggregate, grid_axes, missing_trials, trial_frame
from sgdlab.analysis.report import build_report
from sgdlab.analysis.tc_bootstrap import TcCriteria, tc_estimates
from sgdlab import numerics
from sgdlab.params import flatten, param_text
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(alpha, T, seed, *, P=256, B=16, width=32, lr=None, attempt=1, start=0, status="FINISHED",
           outcome="converged", metrics=None, error="", kind="train", trial_id=None, cpus=1) -> RunRecord:
    """A run as the tracking layer reads it back: flattened config as strings, tags, latest metrics."""
    lr = T * B * width if lr is None else lr
    config = {"model": {"name": "mlp", "alpha": alpha, "width": width}, "seed": seed,
              "optim": {"name": "sgd", "lr": lr, "temperature": T},
              "data": {"name": "digits_parity", "n_train": P, "batch_size": B},
              "resources": {"cpus": cpus}, "fault": {"seeds": None}}
    tid = trial_id or f"a{alpha}-T{T}-s{seed}-P{P}-B{B}-lr{lr}"
    run_tags = {tags.TRIAL_ID: tid, tags.KIND: kind, tags.ATTEMPT: str(attempt), tags.NUMERICS: str(numerics.VERSION)}
    if status in ("FINISHED", "FAILED"):
        run_tags[tags.OUTCOME] = outcome if status == "FINISHED" else "error"
    if error:
        run_tags[tags.ERROR] = error
    return RunRecord(run_id=f"{tid}#{attempt}", status=status, start_time=start, metrics=dict(metrics or {}),
                     params={k: param_text(v) for k, v in flatten(config).items()}, tags=run_tags)


# --- power law -----------------------------------------------------------------------------------------------

def test_power_law_noiseless_is_exact():
    P = np.array([256, 512, 1024, 2048, 4096, 8192, 16384])
    fit = fit_power_law(np.append(P, [0.0]), np.append(3.0 * P ** -0.5, [1.0]))  # x = 0 is left out
    assert fit.exponent == pytest.approx(-0.5, abs=1e-12)
    assert fit.prefactor == pytest.approx(3.0, rel=1e-10)
    assert fit.stderr < 1e-10 and fit.n == 7


def test_power_law_by_hand():
    # log2: u = 0, 1, 2; v = 0, 1, 3 -> slope 3/2, intercept -1/6, residuals 1/6, -1/3, 1/6, RSS = 1/6,
    # S_uu = 2, stderr = sqrt(RSS / (n - 2) / S_uu) = sqrt(1/12) (the same in any log base).
    fit = fit_power_law([1, 2, 4], [1, 2, 8])
    assert fit.exponent == pytest.approx(1.5, abs=1e-12)
    assert fit.prefactor == pytest.approx(2 ** (-1 / 6), rel=1e-12)
    assert fit.stderr == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    assert fit.describe("T_c", "P") == "T_c ~ P^b with b = 1.5 ± 0.29 (3 points)"


def test_power_law_needs_three_x_values():
    with pytest.raises(ValueError, match="at least 3 distinct positive x values, got 1"):
        fit_power_law([4, 4, -1], [1, 2, 3])
    with pytest.raises(ValueError, match="got 2"):  # two points determine a line exactly: no power law
        fit_power_law([1, 2, 2], [1, 4, 4])


def test_power_law_recovers_planted_exponent_within_its_error_bar():
    P = 256.0 * 2 ** np.arange(7)
    sigma, b, c = 0.1, -0.5, 0.3
    rng = np.random.default_rng(0)
    fits = [fit_power_law(P, c * P ** b * np.exp(sigma * rng.standard_normal(len(P)))) for _ in range(400)]
    assert abs(fits[0].exponent - b) < 2 * fits[0].stderr
    # Calibration: |b_hat - b| / stderr is Student-t with n - 2 = 5 dof, P(|t| < 1) = 0.637; and
    # E[stderr] = c4 * sigma / sqrt(S_uu) with c4 = sqrt(2/5) Gamma(3) / Gamma(5/2) = 0.9515.
    inside = np.mean([abs(f.exponent - b) < f.stderr for f in fits])
    assert 0.55 < inside < 0.72
    u = np.log(P)
    expected = 0.9515 * sigma / math.sqrt(((u - u.mean()) ** 2).sum())
    assert np.mean([f.stderr for f in fits]) == pytest.approx(expected, rel=0.08)


# --- T_c -----------------------------------------------------------------------------------------------------

def test_product_law_noiseless_is_exact():
    T, P = np.meshgrid(np.geomspace(1e-3, 1e-1, 5), [256, 512, 1024, 2048])
    fit = fit_product_law(T.ravel(), P.ravel(), 0.3 * T.ravel() ** 0.9 * P.ravel() ** 0.4)
    assert fit.exponents == pytest.approx((0.9, 0.4), abs=1e-12) and fit.prefactor == pytest.approx(0.3, rel=1e-10)
    assert max(fit.stderrs) < 1e-10 and fit.n == 20
    with pytest.raises(ValueError, match="distinct x1"):
        fit_product_law([1, 2, 1, 2], [1, 1, 2, 2], [1, 2, 3, 4])


def test_crossing_temperature_interpolates_in_log_log():
    # level 2 between (100, 1) and (1000, 4): halfway in log -> 100 * sqrt(10); the points may come in any order
    assert crossing_temperature([1000, 1, 100, 10], [4, 1, 1, 1], 2) == pytest.approx(100 * math.sqrt(10), rel=1e-12)
    T = 10.0 ** np.arange(-6, 1)
    w = [0.01, 0.01, 0.011, 0.015, 0.04, 0.2, 1.0]
    assert crossing_temperature(T, w, 0.02) == pytest.approx(1e-3 * 10 ** (math.log10(4 / 3) / math.log10(8 / 3)))
    assert math.isnan(crossing_temperature(T, w, 2.0))  # never reached inside the grid
    assert math.isnan(crossing_temperature(T, w, 0.005))  # already above at the smallest T: below the grid
    # the diagnostic: 2 x the plateau (mean of the 2 smallest T) = 0.02, the same crossing as the fixed level 0.02
    assert plateau_crossing(T, w) == pytest.approx(crossing_temperature(T, w, 0.02), rel=1e-12)
    assert math.isnan(plateau_crossing(T[:2], w[:2]))  # nothing beyond the plateau points


def test_departure_temperature_counts_both_directions_or_one():
    T = [1e-3, 1e-2, 1e-1, 1.0]
    change = [0.0, 0.05, -0.2, 0.3]
    # |change| passes 0.1 between (1e-2, 0.05) and (1e-1, 0.2): a third of the way in log T
    assert departure_temperature(T, change, 0.1) == pytest.approx(1e-2 * 10 ** (1 / 3), rel=1e-12)
    # the fall: -change goes from -0.05 to 0.2, passing 0.1 at 3/5 of the way; the rise: change from -0.2 to 0.3,
    # passing 0.1 at 3/5 of the way
    assert departure_temperature(T, change, 0.1, direction=-1) == pytest.approx(1e-2 * 10 ** 0.6, rel=1e-12)
    assert departure_temperature(T, change, 0.1, direction=1) == pytest.approx(1e-1 * 10 ** 0.6, rel=1e-12)
    assert math.isnan(departure_temperature(T, change, 0.5))


def lazy_sweep(Ps=(256, 1024, 4096), seeds=(0, 1)):
    """Weight change p * max(1, T / T0(P)) with T0 = 0.01 (P/256)^-1/2: T_c = 2 T0 exactly (factor 2).
    Seeds scatter by +-10% (their mean is the curve); T = 0.16 diverges; alpha = 1 has no plateau."""
    records = []
    for P in Ps:
        T0 = 0.01 * (P / 256) ** -0.5
        for k in range(-8, 5):
            T = 0.01 * 2.0 ** k
            for seed in seeds:
                scatter = 1 + 0.1 * (1 if seed == 0 else -1)
                for alpha, w in ((4096, 0.05 * max(1.0, T / T0)), (1, 1.0 + seed)):
                    diverged = k == 4
                    metrics = {"weight_change": math.inf if diverged else w * scatter, "test_error": 0.1,
                               "train_time": 100 * T}
                    records.append(record(alpha, T, seed, P=P, metrics=metrics,
                                          outcome="diverged" if diverged else "converged"))
    return records


def teacher_sweep(Ps=(256, 512, 1024, 2048, 4096), seeds=range(4), scatter=0.05, rng_seed=0):
    """Lazy-regime curves where the plateau grows faster with P than the noisy regime does, as on mnist1d:
    w = 1e-5 P^0.8 + 0.5 T (P/256)^0.5 (delta = 1, gamma = 1/2: a = gamma / delta = 1/2 for a fixed threshold,
    while 2 x the plateau is crossed at T ~ P^+0.3); test error 0.1 / (1 + (T / T_p)^2) with T_p = 0.02 (P/256)^-0.5
    (down by 10% at T = T_p / 3 ~ P^-1/2); t* = 10 T (P/256)^1.5 (tau = 1, b = 3/2); seeds scatter by 5%."""
    rng, records = np.random.default_rng(rng_seed), []
    for P in Ps:
        for T in np.geomspace(1e-5, 0.2, 35):
            for seed in seeds:
                noise = np.exp(scatter * rng.standard_normal(3))
                metrics = {"weight_change": (1e-5 * P ** 0.8 + 0.5 * T * (P / 256) ** 0.5) * noise[0],
                           "test_error": 0.1 / (1 + (T / (0.02 * (P / 256) ** -0.5)) ** 2) * noise[1] ** 0.2,
                           "train_time": 10 * T * (P / 256) ** 1.5 * noise[2]}
                records.append(record(4096, float(T), seed, P=P, metrics=metrics))
    return records


def test_report_tc_falls_with_P_at_fixed_thresholds_where_the_plateau_relative_crossing_rises(tmp_path):
    report = build_report(teacher_sweep(), "temperature_vs_p", tmp_path)
    n, P = report.numbers, np.array([256, 512, 1024, 2048, 4096])
    plateau, slope = 1e-5 * P ** 0.8, 0.5 * (P / 256) ** 0.5
    for c in (0.02, 0.05, 0.1):  # the kernel-escape T_c, (c - plateau) / slope exactly: falls with P, a > 1/2
        exact = -fit_power_law(P, (c - plateau) / slope).exponent  # 0.65 at c = 0.02, 0.53 at 0.1
        assert n[f"summary/a_escape_{c:g}"] == pytest.approx(exact, abs=0.03), c
        assert n[f"summary/a_escape_{c:g}_low"] > 0.45
    # the plateau-relative crossing, plateau / slope ~ P^+0.3: it rises with P on the same curves (its plateau is
    # the mean of 2 points x 4 seeds, each scattered by 5%)
    assert n["summary/a_plateau_diagnostic"] == pytest.approx(-0.3, abs=0.06)
    assert n["summary/a_plateau_diagnostic_high"] < -0.2
    assert n["summary/a_performance_fall"] == pytest.approx(0.5, abs=0.1)
    assert n["summary/a_performance"] == pytest.approx(0.5, abs=0.1)
    assert n["summary/delta"] == pytest.approx(1.0, abs=0.1) and n["summary/gamma"] == pytest.approx(0.5, abs=0.1)
    assert n["summary/tau"] == pytest.approx(1.0, abs=0.05) and n["summary/b"] == pytest.approx(1.5, abs=0.05)
    assert "| 2 x plateau (diagnostic, not T_c) |" in report.markdown
    for figure in ("weight_change_vs_T.png", "error_change_vs_T.png", "tc_vs_P.png", "collapse.png"):
        assert (tmp_path / figure).read_bytes()[:8] == PNG_MAGIC, figure


# --- frames --------------------------------------------------------------------------------------------------

def test_frame_takes_latest_finished_attempt_and_keeps_unfinished_trials():
    records = [
        record(1, 0.01, 0, attempt=1, start=1, metrics={"test_error": 0.3}),
        record(1, 0.01, 0, attempt=2, start=2, metrics={"test_error": 0.2}),  # latest finished: this one
        record(1, 0.01, 1, attempt=1, start=1, metrics={"test_error": 0.4}),
        record(1, 0.01, 1, attempt=2, start=2, status="FAILED", error="OSError: disk", metrics={"test_error": 9}),
        record(4, 0.01, 0, status="FAILED", error="RuntimeError: boom", metrics={"test_error": 9}),
        record(4, 0.01, 1, status="RUNNING", metrics={"test_error": 9}),
        record(4, 0.1, 0, attempt=1, status="FAILED", error="x"),
        record(4, 0.1, 0, attempt=2, start=5, status="RUNNING"),
        record(4, 0.1, 1, outcome="diverged", metrics={"test_error": 0.5}),
        record(4, 0.1, 1, kind="probe", trial_id="probe-1", metrics={"sharpness": 3.0}),  # not a train run
    ]
    df = trial_frame(records).set_index(["alpha", "T", "seed"])
    assert len(df) == 6 and "sharpness" not in df and "resources.cpus" not in df
    assert df.loc[(1, 0.01, 0), ["status", "attempt", "test_error"]].tolist() == ["finished", 2, 0.2]
    assert df.loc[(1, 0.01, 1), ["status", "attempt", "n_attempts", "test_error"]].tolist() == [
        "finished", 1, 2, 0.4]
    assert df.loc[(4, 0.01, 0), "status"] == "failed" and df.loc[(4, 0.01, 0), "error"] == "RuntimeError: boom"
    assert math.isnan(df.loc[(4, 0.01, 0), "test_error"])  # a failed trial carries no result
    assert df.loc[(4, 0.01, 1), "status"] == df.loc[(4, 0.1, 0), "status"] == "unfinished"
    assert df.loc[(4, 0.1, 1), ["status", "outcome"]].tolist() == ["finished", "diverged"]
    assert df["status"].value_counts().to_dict() == {"finished": 3, "unfinished": 2, "failed": 1}
    assert df.loc[(1, 0.01, 0), ["lr", "B", "P", "optimizer"]].tolist() == [pytest.approx(5.12), 16, 256, "sgd"]


def test_frame_names_other_swept_params_by_their_key():
    records = [record(1, 0.01, 0, width=32, cpus=1), record(1, 0.01, 0, width=64, cpus=2)]
    df = trial_frame(records)
    assert list(df["model.width"]) == [32, 64] and "resources.cpus" not in df and "model.name" not in df


def test_aggregate_over_seeds_by_hand():
    records = [record(1, 0.01, s, metrics={"test_error": e}) for s, e in enumerate([0.1, 0.2, 0.4])]
    records += [record(1, 0.01, 3, outcome="diverged", metrics={"test_error": 0.5}),
                record(1, 0.01, 4, status="FAILED", error="boom"),
                record(1, 0.1, 0, outcome="max_steps", metrics={"test_error": 0.25})]
    table = aggregate(trial_frame(records), by=["alpha", "T"], metrics=["test_error"]).set_index("T")
    a = table.loc[0.01]
    assert (a.n_trials, a.n_finished, a.n_diverged, a.n_failed, a.n_unfinished) == (5, 4, 1, 1, 0)
    assert a.frac_diverged == pytest.approx(0.25)
    # mean of 0.1, 0.2, 0.4 = 0.233333; sample std = sqrt(0.046667 / 2) = 0.152753; / sqrt(3) = 0.088192
    assert a.test_error_mean == pytest.approx(0.7 / 3) and a.test_error_n == 3
    assert a.test_error_se == pytest.approx(0.0881917, rel=1e-5)
    b = table.loc[0.1]
    assert b.test_error_mean == 0.25 and b.test_error_n == 1 and math.isnan(b.test_error_se)
    assert b.frac_diverged == 0


def test_missing_trials_on_the_grid_of_independent_axes():
    # lr x B sweep with T = lr / B derived (width 1): the grid is lr x B (9 points), not T x B
    records = [record(1, lr / B, 0, B=B, width=1, lr=lr) for lr in (0.1, 0.2, 0.4) for B in (1, 2, 4)
               if (lr, B) != (0.4, 2)]
    df = trial_frame(records)
    assert sorted(grid_axes(df)) == ["B", "lr"]
    assert missing_trials(df).to_dict("records") == [{"lr": 0.4, "B": 2}]
    # T x B sweep, lr = T B derived: the grid is T x B, not lr x B (6 lr values) nor T x lr
    df = trial_frame([record(1, T, 0, B=B, width=1) for T in (0.1, 0.2) for B in (1, 2, 4) if (T, B) != (0.2, 4)])
    assert grid_axes(df) == ["T", "B"]
    assert missing_trials(df).to_dict("records") == [{"T": 0.2, "B": 4}]


# --- report --------------------------------------------------------------------------------------------------

def smoke_records(B=16):
    """The smoke sweep's shape: alpha in {1, 1024} x T in {0.001, 0.01} x seeds {0, 1} at P = 256."""
    out = []
    for alpha in (1, 1024):
        for T in (0.001, 0.01):
            for seed in (0, 1):
                outcome = {(1, 0.01, 1): "diverged", (1024, 0.001, 0): "max_steps"}.get((alpha, T, seed),
                                                                                      "converged")
                err = 0.1 + 0.1 * (alpha == 1) + 0.02 * seed
                out.append(record(alpha, T, seed, B=B, outcome=outcome, start=seed, metrics={
                    "test_error": err, "train_error": 0.0, "weight_change": 0.01 * T / alpha ** 0.5,
                    "train_time": 1000 * T, "steps": 500.0}))
    return out


def test_report_of_the_smoke_shape(tmp_path):
    report = build_report(smoke_records(), "smoke", tmp_path)
    names = sorted(p.name for p in report.figures)
    assert names == ["phase_test_error.png", "phase_train_time.png", "phase_weight_change.png"]
    assert all((tmp_path / n).read_bytes()[:8] == PNG_MAGIC for n in names)
    md = (tmp_path / "summary.md").read_text()
    assert md == report.markdown
    assert ("8 trials recorded: 8 finished (6 converged, 1 diverged, 1 max_steps), 0 failed, 0 unfinished; "
            "0 of the 8 grid points (alpha x T x seed) have no run.") in md
    assert "Partial report" not in md and "T_c(P): not computed" in md
    assert all(f"[{n}]({n})" in md for n in names)
    csv = pd.read_csv(tmp_path / "summary.csv").set_index(["alpha", "T"])
    assert len(csv) == 4 and csv["n_finished"].sum() == 8 and csv["n_diverged"].sum() == 1
    assert csv.loc[(1, 0.01), "test_error_mean"] == pytest.approx(0.2)  # the diverged seed 1 is left out
    assert csv.loc[(1024, 0.001), "test_error_mean"] == pytest.approx(0.11)
    assert csv.loc[(1024, 0.001), "test_error_se"] == pytest.approx(0.01)  # std(0.10, 0.12) / sqrt(2)


def test_partial_report_says_what_is_missing(tmp_path):
    records = [r for r in smoke_records() if r.trial_id != record(1024, 0.01, 1).trial_id]
    failed = record(1, 0.001, 0, attempt=2, start=9, status="FAILED", error="RuntimeError: boom")
    records = [r for r in records if r.trial_id != failed.trial_id] + [failed]
    report = build_report(records, "smoke", tmp_path)
    md = report.markdown
    assert "7 trials recorded: 6 finished (4 converged, 1 diverged, 1 max_steps), 1 failed, 0 unfinished; " \
           "1 of the 8 grid points (alpha x T x seed) have no run." in md
    assert "**Partial report**: 6 of 8 trials" in md
    assert "- alpha=1 T=0.001 seed=0 (trial " in md and "attempt 2): RuntimeError: boom" in md
    assert "Missing, no run at all (1):\n- alpha=1024 T=0.01 seed=1" in md
    assert (tmp_path / "phase_test_error.png").read_bytes()[:8] == PNG_MAGIC
    assert report.summary["n_failed"].sum() == 1 and report.summary["n_trials"].sum() == 7


ONE_THRESHOLD = TcCriteria(thresholds=(0.1,))  # lazy_sweep's T_c: 2 x its 0.05 plateau, at T = 2 T0 exactly


def test_tc_leaves_out_trials_stopped_at_max_steps(tmp_path):
    capped = [replace(r, tags={**r.tags, tags.OUTCOME: "max_steps"}, metrics={**r.metrics, "weight_change": 1e-9})
              if r.params["data.n_train"] == "1024" and r.params["optim.temperature"] == "0.08" else r
              for r in lazy_sweep()]
    report = build_report(capped, "sgd_noise", tmp_path, criteria=ONE_THRESHOLD)
    assert "2 trials stopped at max_steps are left out." in report.markdown  # the 2 seeds at alpha = 4096
    assert report.numbers["summary/T_c/escape_0.1/P 1024"] == pytest.approx(0.01)  # T = 0.08 gone, T_c unchanged
    assert report.numbers["summary/a_escape_0.1"] == pytest.approx(0.5)


def test_report_fits_tc_when_T_and_P_vary(tmp_path):
    report = build_report(lazy_sweep(), "sgd_noise", tmp_path, criteria=ONE_THRESHOLD)
    names = {p.name for p in report.figures}
    assert {"tc_vs_P.png", "weight_change_vs_T.png", "collapse.png", "phase_test_error.png"} <= names
    n = report.numbers
    assert [n[f"summary/T_c/escape_0.1/P {P}"] for P in (256, 1024, 4096)] == pytest.approx([0.02, 0.01, 0.005])
    # T_c ~ P^-1/2 (a = 1/2) at the largest alpha; alpha = 1 (no plateau) is left out
    assert n["summary/a_escape_0.1"] == pytest.approx(0.5)
    assert n["summary/a_escape_0.1_low"] <= 0.5 <= n["summary/a_escape_0.1_high"]
    assert n["summary/tau"] == pytest.approx(1.0) and n["summary/b"] == pytest.approx(0.0, abs=1e-9)  # t* = 100 T
    # the test error never moves (0.1 at every T): no performance T_c
    assert math.isnan(n["summary/T_c/performance/P 1024"]) and math.isnan(n["summary/a_performance"])
    assert "| w = 0.1 (kernel escape) | 0.02 [" in report.markdown


def test_report_with_no_runs(tmp_path):
    report = build_report([], "empty", tmp_path)
    assert report.figures == [] and "No train run is recorded" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.csv").exists()


def test_analysis_imports_no_heavy_framework():
    code = ("import sys, sgdlab.analysis.report; "
            "print(sorted(m for m in ('mlflow', 'ray', 'torch', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lines_plot_with_text_groups_and_fits(tmp_path):
    from sgdlab.analysis.plots import lines_plot

    B = np.array([8.0, 16, 32, 64])
    table = pd.DataFrame({"B": np.tile(B, 2), "optimizer": ["sgd"] * 4 + ["adam"] * 4,
                          "lr": np.concatenate([0.01 * B, 0.01 * B ** 0.5])})
    fits = {name: fit_power_law(part["B"], part["lr"]) for name, part in table.groupby("optimizer")}
    assert fits["sgd"].exponent == pytest.approx(1.0) and fits["adam"].exponent == pytest.approx(0.5)
    path = lines_plot(table, "B", "lr", tmp_path / "lr_vs_B.png", group="optimizer", fits=fits)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_report_splits_figures_by_a_param_that_varies_within_cells(tmp_path):
    records = [r for B in (16, 32) for r in smoke_records(B)]
    names = sorted(p.name for p in build_report(records, "two_B", tmp_path).figures)
    assert names == sorted(f"phase_{m}_B={B}.png" for m in ("test_error", "weight_change", "train_time")
                           for B in (16, 32))  # by B, not by the lr = T B width derived from it



# --- perceptron P exponent -----------------------------------------------------------------------------------

def perceptron_record(chi, T, P, seed, delta, outcome="converged") -> RunRecord:
    """A perceptron run on the chi-depleted teacher task with final ||w - w0|| = delta."""
    config = {"model": {"name": "perceptron", "alpha": 1.0}, "seed": seed,
              "optim": {"name": "sgd", "lr": 8 * T, "temperature": T},
              "data": {"name": "teacher_perceptron", "n_train": P, "batch_size": 8, "chi": chi}}
    tid = f"chi{chi}-T{T}-P{P}-s{seed}"
    return RunRecord(run_id=f"{tid}#1", status="FINISHED", start_time=0,
                     metrics={"weight_delta": delta, "weight_change": delta / 5.0, "steps": 100.0},
                     params={k: param_text(v) for k, v in flatten(config).items()},
                     tags={tags.TRIAL_ID: tid, tags.KIND: "train", tags.ATTEMPT: "1", tags.OUTCOME: outcome,
                           tags.NUMERICS: str(numerics.VERSION)})


def planted_perceptron(sigma=0.05, seeds=range(4)):
    """||w - w0|| = 3 T P^(1/(1+chi)) exp(sigma z), z ~ N(0, 1) per run; at P = 2048 every run stopped at
    max_steps with a norm 10x too small, and at T = 1, P = 1024, seed 0 the run diverged (both must be left out)."""
    rng = np.random.default_rng(1)
    records = []
    for chi in (0.0, 1.0):
        for T in (0.1, 1.0):
            for seed in seeds:
                for P in (128, 256, 512, 1024, 2048):
                    delta = 3 * T * P ** (1 / (1 + chi)) * math.exp(sigma * rng.standard_normal())
                    outcome = ("max_steps" if P == 2048 else
                               "diverged" if (T, P, seed) == (1.0, 1024, 0) else "converged")
                    records.append(perceptron_record(chi, T, P, seed, delta / 10 if P == 2048 else delta, outcome))
    return records


def test_p_exponent_noiseless_is_exact_and_leaves_out_unfitted_runs():
    from sgdlab.analysis.perceptron import p_exponents

    table = p_exponents(trial_frame(planted_perceptron(sigma=0.0)))
    assert list(zip(table["chi"], table["T"])) == [(0.0, 0.1), (0.0, 1.0), (1.0, 0.1), (1.0, 1.0)]
    assert set(table["metric"]) == {"weight_delta"}  # records without the teacher frame: ||w - w0|| only
    assert np.allclose(table["exponent"], table["claim"], atol=1e-9)  # no trace of the max_steps runs
    assert np.allclose(table["claim"], [1, 1, 0.5, 0.5])
    assert list(table["n_replicas"]) == [4, 4, 4, 4] and list(table["n_P"]) == [4, 4, 4, 4]
    assert np.all(table["exponent_se"] < 1e-9) and np.allclose(table["low"], table["high"])


def test_p_exponent_recovers_the_planted_exponent_within_its_error_bar():
    from sgdlab.analysis.perceptron import p_exponents

    sigma = 0.05
    records = planted_perceptron(sigma=sigma, seeds=range(8))
    table = p_exponents(trial_frame(records)).set_index(["chi", "T"])
    assert np.all(np.abs(table["exponent"] - table["claim"]) < 3 * table["exponent_se"])
    # each seed's slope over log P = log 128 .. log 1024 (4 points, S_uu = 5 (log 2)^2) scatters by
    # sigma / sqrt(S_uu) = 0.032, so the mean of 8 seeds has a standard error near 0.011
    nominal = sigma / math.sqrt(5 * math.log(2) ** 2) / math.sqrt(8)
    assert np.all((table["exponent_se"] > nominal / 3) & (table["exponent_se"] < 3 * nominal))
    # by hand for chi = 1, T = 1: seed 0 diverged at P = 1024 and fits 3 P, the others 4; P = 2048 never counts
    slopes = []
    for seed in range(8):
        runs = [r for r in records if r.params["data.chi"] == "1" and r.params["optim.temperature"] == "1"
                and r.params["seed"] == str(seed) and r.tags[tags.OUTCOME] == "converged"]
        P = [float(r.params["data.n_train"]) for r in runs]
        slopes.append(np.polyfit(np.log(P), np.log([r.metrics["weight_delta"] for r in runs]), 1)[0])
    row = table.loc[(1.0, 1.0)]
    assert row["exponent"] == pytest.approx(np.mean(slopes), rel=1e-9)
    assert row["exponent_se"] == pytest.approx(np.std(slopes, ddof=1) / math.sqrt(8), rel=1e-9)
    assert row["n_replicas"] == 8 and row["n_P"] == 4
    # the bootstrap 68% interval of a mean of 8 is about +- its standard error
    assert row["low"] < row["exponent"] < row["high"]
    assert 0.6 < (row["high"] - row["low"]) / (2 * row["exponent_se"]) < 1.2


def test_report_of_a_perceptron_sweep_draws_the_exponent_figures(tmp_path):
    report = build_report(planted_perceptron(sigma=0.0), "perceptron", tmp_path)
    names = {p.name for p in report.figures}
    assert {"p_exponent_vs_chi.png", "norm_vs_P.png"} <= names
    assert all((tmp_path / n).read_bytes()[:8] == PNG_MAGIC for n in names)
    assert "| ||w - w0|| | 1 | 0.5 | 0.1 | 0.5 ± 0 | [0.5, 0.5] | 4 | 4 |" in report.markdown
    assert pd.read_csv(tmp_path / "p_exponents.csv").shape == (4, 15)
    assert report.numbers["summary/perceptron_exponent/weight_delta/chi 1/T 0.1"] == pytest.approx(0.5)


def test_perceptron_replicas_the_teacher_frame_ratio_and_one_chi(tmp_path):
    """Replicas are (seed, data.seed) pairs; the ratio w_par / ||w_perp|| is fitted beside ||w - w0||; one chi is
    enough for the section, and too few P say why there is no fit."""
    from sgdlab.analysis.perceptron import p_exponents

    records = []
    for data_seed in (0, 1):
        for run in planted_perceptron(sigma=0.0, seeds=range(2)):
            if run.params["data.chi"] != "0" or run.params["optim.temperature"] != "0.1":
                continue
            P = float(run.params["data.n_train"])
            records.append(replace(run, run_id=f"{run.run_id}-d{data_seed}",
                                   params={**run.params, "data.seed": str(data_seed)},
                                   tags={**run.tags, tags.TRIAL_ID: f"{run.tags[tags.TRIAL_ID]}-d{data_seed}"},
                                   metrics={**run.metrics, "w_ratio": 0.2 * P ** 0.9}))
    table = p_exponents(trial_frame(records)).set_index("metric")
    assert table.loc["w_ratio", "exponent"] == pytest.approx(0.9) and table.loc["w_ratio", "n_replicas"] == 4
    assert table.loc["weight_delta", "exponent"] == pytest.approx(1.0) and table.loc["weight_delta", "chi"] == 0
    report = build_report(records, "perceptron", tmp_path)
    assert "| w_par / ||w_perp|| | 0 | 1 | 0.1 | 0.9 ± " in report.markdown
    few = [r for r in records if r.params["data.n_train"] in ("128", "256")]
    assert "- Perceptron P exponents: not computed (needs at least 3 values of P; here 2)." in build_report(
        few, "perceptron", tmp_path).markdown


def test_tc_estimates_recover_the_exponents_of_synthetic_curves():
    """teacher_sweep's laws (a = 1/2 at a fixed threshold, delta = 1, gamma = 1/2, tau = 1, b = 3/2) with 5% seed
    scatter: the 68% intervals are narrow and contain them."""
    result = tc_estimates(trial_frame(teacher_sweep()), n_boot=200)
    exponents = result.exponents.set_index("quantity")
    for quantity, truth in (("a_escape_0.1", 0.5), ("delta", 1.0), ("gamma", 0.5), ("tau", 1.0), ("b", 1.5)):
        low, high = exponents.loc[quantity, ["low", "high"]]
        assert low - 0.05 <= truth <= high + 0.05 and high - low < 0.1, (quantity, low, high)
    assert result.seeds == {P: 4 for P in (256, 512, 1024, 2048, 4096)}
    temperatures = result.temperatures.dropna()
    assert (temperatures["low"] <= temperatures["T_c"]).all() and (temperatures["T_c"] <= temperatures["high"]).all()
    assert result.delta_per_P["delta"].between(0.8, 1.1).all()
