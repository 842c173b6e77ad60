"""The curvature part of `sgdlab report`: largest stable lr, edge of stability, mini-batch ratios, Wu & Su,
spectral densities, per-layer sensitivity, metric histories from the store, and the command end to end.

Synthetic records of planted shape (no Ray): every check compares with an answer worked out by hand or planted.
One test writes a real SQLite MLflow store with MlflowClient and runs `sgdlab report` on it.
"""

import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_sgdlab
from sgdlab.analysis.frames import swept_columns, trial_frame
from sgdlab.analysis.probes import batch_table, layer_table, probe_frame
from sgdlab.analysis.report import build_report
from sgdlab.analysis.sensitivity import layer_sensitivity
from sgdlab.analysis.spectra import fit_batch_ratio, read_density
from sgdlab.analysis.stability import (eos_ratio, eos_table, largest_stable_lr, stable_lr_fit, trajectory_frame,
                                       wu_su, wu_su_p)
from sgdlab import numerics
from sgdlab.params import flatten, param_text
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train(lr, B, seed, *, optimizer="sgd", P=128, alpha=1.0, outcome="converged", status="FINISHED", metrics=None,
          start=0) -> RunRecord:
    """A train run as tracking reads it back (flattened config as strings)."""
    config = {"model": {"name": "mlp", "alpha": alpha, "width": 16}, "seed": seed, "loss": {"name": "mse"},
              "optim": {"name": optimizer, "lr": lr, "temperature": lr / (B * 16)},
              "data": {"name": "digits_parity", "n_train": P, "batch_size": B}, "probe": {"n_examples": 1024}}
    tid = f"{optimizer}-lr{lr}-B{B}-s{seed}-P{P}-a{alpha}"
    run_tags = {tags.TRIAL_ID: tid, tags.KIND: "train", tags.ATTEMPT: "1", tags.NUMERICS: str(numerics.VERSION)}
    if status == "FINISHED":
        run_tags[tags.OUTCOME] = outcome
    return RunRecord(run_id=f"train-{tid}", status=status, start_time=start, metrics=dict(metrics or {}),
                     params={k: param_text(v) for k, v in flatten(config).items()}, tags=run_tags)


def probe(of: RunRecord, metrics: dict, *, start=1, run_id=None, matrix="full", n_examples=1024, slq=0,
          status="FINISHED") -> RunRecord:
    """A probe run of the train run `of`: the same config (params) plus probe.*, tags naming the train run."""
    params = {**of.params, "probe.n_examples": str(n_examples), "probe.slq_starts": str(slq)}
    run_tags = {tags.TRIAL_ID: of.trial_id, tags.KIND: "probe", tags.ATTEMPT: "1", tags.TRAIN_RUN: of.run_id,
                tags.NUMERICS: str(numerics.VERSION),
                tags.PROBE_ID: f"p-{of.trial_id}-{matrix}", "sgdlab.matrix": matrix, tags.OUTCOME: "converged"}
    return RunRecord(run_id=run_id or f"probe-{of.trial_id}-{start}", status=status, start_time=start,
                     metrics=dict(metrics), params=params, tags=run_tags)


# --- largest stable lr -----------------------------------------------------------------------------------------

def test_lr_max_from_a_refinement_beside_the_step0_prediction(tmp_path):
    """With a refinement of optim.lr, lr_max is its bracket (not a diverged seed); the step-0 probe's
    E[lambda_max(H_B)] = 0.1 B^-1/2 (seeds 10% apart) gives the prediction 2 / mean = 20 B^1/2, fitted exactly,
    and the full-batch line 2 / lambda_max(H) from the ratio."""
    records = []
    for B in (4, 16, 64):
        for lr in (1.0, 8.0):
            for seed in (0, 1):
                lam = 0.1 * B ** -0.5 * (1.1 if seed else 0.9)
                records.append(train(lr, B, seed, P=1024, outcome="max_steps",
                                     metrics={f"batch_lambda_max/B{B}": lam, f"batch_lambda_max_ratio/B{B}": lam / 0.01,
                                              "train_loss": 0.1}))
    brackets = pd.DataFrame([{"optim": "sgd", "data.batch_size": str(B), "lower": lo, "upper": hi,
                              "estimate": math.sqrt(lo * hi), "rounds": 3, "trials": 10, "added": 6,
                              "status": "located"} for B, lo, hi in ((4, 2.0, 2.4), (16, 4.0, 4.8), (64, 8.0, 9.6))])
    report = build_report(records, "lr_refined", tmp_path, refinement=(brackets, "optim.lr", "final train_loss > "
                                                                                         "initial train_loss"))
    table = pd.read_csv(tmp_path / "lr_max.csv").set_index("B")
    assert list(table["lr_max"]) == [2.0, 4.0, 8.0] and list(table["lr_unstable"]) == [2.4, 4.8, 9.6]
    predicted = pd.read_csv(tmp_path / "lr_predicted.csv").set_index("B")
    assert np.allclose(predicted["lr_predicted"], [20 * 2, 20 * 4, 20 * 8])
    assert np.allclose(predicted["lr_full_batch"], 200)
    assert report.numbers["summary/lr_predicted_exponent"] == pytest.approx(0.5)
    assert report.numbers["summary/lr_max_exponent/SGD"] == pytest.approx(0.5)
    assert "| SGD | 16 | 4 | 4.8 | 10 | 80 |" in report.markdown
    assert "lr_max is the lower end of the refinement's bracket" in report.markdown


def test_lr_max_is_fitted_again_below_the_noise_scale(tmp_path):
    """lr_max = B / 100 up to B = 16 and ~ B^1/2 above; the step-0 probe measured B_noise = 64 (so B_noise / 4 =
    16): the fit over B <= 16 is the linear law, the fit over all B is flatter, and the table gives B_noise."""
    batches = (1, 2, 4, 8, 16, 64, 256)
    lr_max = {B: B / 100 if B <= 16 else 0.16 * (B / 16) ** 0.5 for B in batches}
    records = [train(lr, B, seed, P=1024, outcome="max_steps",
                     metrics={f"batch_lambda_max/B{B}": 0.1, f"batch_lambda_max_ratio/B{B}": 2.0,
                              "noise_scale": 60.0 + 8 * seed, "train_loss": 0.1})
               for B in batches for lr in (0.01, 1.0) for seed in (0, 1)]
    brackets = pd.DataFrame([{"optim": "sgd", "data.batch_size": str(B), "lower": lr_max[B], "upper": 1.1 * lr_max[B],
                              "estimate": lr_max[B], "rounds": 3, "trials": 10, "added": 6, "status": "located"}
                             for B in batches])
    report = build_report(records, "lr_noise", tmp_path, refinement=(brackets, "optim.lr", "max train_loss > 1.5 x "
                                                                                        "initial train_loss"))
    numbers = report.numbers
    assert numbers["summary/noise_scale_at_start"] == pytest.approx(64.0)
    assert numbers["summary/lr_max_exponent_noise_regime/SGD"] == pytest.approx(1.0)
    assert numbers["summary/lr_max_exponent/SGD"] < 0.85
    fits = pd.read_csv(tmp_path / "lr_max_fits.csv").set_index(["line", "range"])
    assert fits.loc[("SGD", "B <= B_noise / 4"), "n_points"] == 5
    assert fits.loc[("SGD", "all B"), "n_points"] == 7
    assert "~ B^1.00 ± 0.00 for SGD over B <= B_noise / 4 = 16" in report.markdown
    assert "| SGD | 4 | 0.04 | 0.044 | 10 | 20 | 64 |" in report.markdown


def test_largest_stable_lr_criterion_by_hand():
    records = [
        # B = 8: lr 0.1, 0.2 stable; 0.4 one seed diverged; 0.8 stable again (above the first unstable: ignored)
        *[train(lr, 8, s) for lr in (0.1, 0.2, 0.8) for s in (0, 1)],
        train(0.4, 8, 0), train(0.4, 8, 1, outcome="diverged"),
        # B = 16: 0.4 has a failed seed and no divergence (undetermined, skipped); 0.8 diverged -> lr_max = 0.2
        *[train(lr, 16, s) for lr in (0.1, 0.2) for s in (0, 1)], train(0.4, 16, 0),
        train(0.4, 16, 1, status="FAILED"), train(0.8, 16, 0, outcome="diverged"), train(0.8, 16, 1),
        # B = 32: nothing diverged: 0.8 is only a lower bound
        *[train(lr, 32, s, outcome="max_steps") for lr in (0.1, 0.2, 0.4, 0.8) for s in (0, 1)],
        # B = 64: already the smallest lr diverges: no lr_max
        *[train(lr, 64, s, outcome="diverged") for lr in (0.1, 0.2, 0.4, 0.8) for s in (0, 1)],
    ]
    table = largest_stable_lr(trial_frame(records), ["optimizer", "B"]).set_index("B")
    assert table.loc[8, ["lr_max", "lr_unstable", "censored", "n_stable", "n_unstable"]].tolist() == [
        0.2, 0.4, False, 3, 1]
    assert table.loc[16, ["lr_max", "lr_unstable", "censored", "n_stable", "n_unstable"]].tolist() == [
        0.2, 0.8, False, 2, 1]
    assert table.loc[32, "lr_max"] == 0.8 and table.loc[32, "censored"] and math.isnan(table.loc[32, "lr_unstable"])
    assert math.isnan(table.loc[64, "lr_max"]) and table.loc[64, "lr_unstable"] == 0.1
    fit = stable_lr_fit(table.reset_index())  # B = 8 and 16 only: 32 is censored, 64 has none
    assert fit is None  # a fit needs 3 batch sizes


LR_GRID = 1e-3 * 2.0 ** (np.arange(0, 48) / 4)  # factor 2^(1/4)
BATCHES = 2 ** np.arange(2, 9)  # 4 .. 256
PLANTED = {"sgd": (0.003, 1.0), "adam": (0.004, 0.5)}  # threshold = a B^b, jittered per (optimizer, B)


def lr_grid_records(seeds=(0, 1)):
    """(optimizer, B, lr, seed) grid; a trial diverges when lr exceeds its threshold a B^b exp(0.15 z) (z per
    optimizer and B, seed 1's threshold 3% higher). Returns the records and the planted lr_max per (opt, B)."""
    rng = np.random.default_rng(7)
    records, expected = [], {}
    for optimizer, (a, b) in PLANTED.items():
        for B in BATCHES:
            threshold = a * B ** b * math.exp(0.15 * rng.standard_normal())
            expected[optimizer, int(B)] = LR_GRID[LR_GRID <= threshold].max()
            for lr in LR_GRID:
                for seed in seeds:
                    diverged = lr > threshold * (1 + 0.03 * seed)
                    records.append(train(float(lr), int(B), seed, optimizer=optimizer, P=1024,
                                         outcome="diverged" if diverged else "converged",
                                         metrics={"test_error": 0.1, "train_loss": 0.01}))
    return records, expected


def test_planted_lr_max_slopes_are_recovered_within_their_error_bars(tmp_path):
    records, expected = lr_grid_records()
    report = build_report(records, "lr_grid", tmp_path)
    table = pd.read_csv(tmp_path / "lr_max.csv")
    assert len(table) == 14 and not table["censored"].any()
    for row in table.itertuples():
        assert row.lr_max == pytest.approx(expected[row.optimizer, row.B], rel=1e-12)
        assert row.lr_unstable == pytest.approx(row.lr_max * 2 ** 0.25, rel=1e-9)  # the next grid lr
    fits = pd.read_csv(tmp_path / "lr_max_fits.csv").set_index("line")
    for optimizer, name in (("sgd", "SGD"), ("adam", "Adam")):
        fit = fits.loc[name]
        assert 0 < fit.exponent_se < 0.06  # an informative error bar
        assert abs(fit.exponent - PLANTED[optimizer][1]) < 2.5 * fit.exponent_se
        assert fit.reference == PLANTED[optimizer][1]
    sgd, adam = fits.loc["SGD"], fits.loc["Adam"]
    assert report.numbers["summary/lr_max_exponent/SGD"] == sgd.exponent
    assert report.numbers["summary/lr_max_exponent_se/Adam"] == adam.exponent_se
    assert report.numbers["summary/lr_max/SGD/B 64"] == pytest.approx(0.152219, rel=1e-5)
    assert (f"- largest stable lr ~ B^{adam.exponent:.2f} ± {adam.exponent_se:.2f} for Adam (reference 1/2), "
            f"~ B^{sgd.exponent:.2f} ± {sgd.exponent_se:.2f} for SGD (reference 1).") in report.markdown
    assert "| SGD | 64 | 0.152219 | 0.181019 | 30/18/48 | - |" in report.markdown  # no step-0 probe: no prediction
    assert "lr_max_vs_B.png" in {p.name for p in report.figures}
    assert (tmp_path / "lr_max_vs_B.png").read_bytes()[:8] == PNG_MAGIC
    assert {p.name for p in report.tables} == {"lr_max.csv", "lr_max_fits.csv"}
    assert "[lr_max.csv](lr_max.csv)" in report.markdown


def test_a_train_only_sweep_gets_no_curvature_section(tmp_path):
    # alpha x T x B with divergences: lr is derived from T, not a grid axis -> no lr_max figure, and no probes
    records = [train(T * B * 16, B, s, alpha=alpha, outcome="diverged" if T == 0.01 and alpha == 1 else "converged",
                     metrics={"test_error": 0.1, "weight_change": 0.01, "train_time": 1.0})
               for alpha in (1, 64) for T in (0.001, 0.01) for B in (8, 16) for s in (0, 1)]
    report = build_report(records, "plain", tmp_path)
    assert "Curvature" not in report.markdown and report.tables == []
    assert all(p.name.startswith("phase_") for p in report.figures)
    assert sorted(f.name for f in tmp_path.glob("*.csv")) == ["summary.csv"]


# --- edge of stability -----------------------------------------------------------------------------------------

STEPS = np.arange(0, 4001, 50)


def plateau(lr, level, seed=0):
    """Sharpness rising linearly to level * 2/lr by step 1000, then oscillating +-3% around it."""
    target = level * 2 / lr
    s = target * np.minimum(1, STEPS / 1000) + target * 0.03 * np.sin(STEPS / 37 + seed) * (STEPS > 1000)
    return [(int(t), float(v)) for t, v in zip(STEPS, s)]


def test_eos_ratio_of_trajectories_that_plateau_at_two_over_lr():
    steps, values = zip(*plateau(0.1, 1.0))
    tail = np.asarray(values)[np.asarray(steps) >= 3000]
    assert eos_ratio(steps, values, 0.1) == pytest.approx(0.1 / 2 * tail.mean(), rel=1e-12)
    assert eos_ratio(steps, values, 0.1) == pytest.approx(1.0, abs=0.02)
    runs = [train(lr, B, 0, metrics={"sharpness": 1.0}) for lr in (0.05, 0.2) for B in (8, 128)]
    levels = {8: 0.5, 128: 1.0}  # full batch (B = P = 128) at the edge, B = 8 flatter
    histories = {r.run_id: {"sharpness": plateau(float(r.params["optim.lr"]), levels[int(r.params["data.batch_size"])])}
                 for r in runs}
    table = eos_table(trajectory_frame(trial_frame(runs), histories)).set_index(["lr", "B"])
    for (lr, B), row in table.iterrows():
        assert row.eos_ratio == pytest.approx(levels[B], abs=0.02)
        assert row.threshold == pytest.approx(2 / lr) and row.points == len(STEPS)


# --- mini-batch ratio, Wu & Su, layers ---------------------------------------------------------------------------

def test_batch_ratio_fit_recovers_planted_c():
    rng = np.random.default_rng(3)
    B = np.repeat([4, 8, 16, 32, 64, 128], 5)
    ratio = 1 + 6.0 * (1 / B - 1 / 128) * (1 + 0.05 * rng.standard_normal(len(B)))
    fit = fit_batch_ratio(B, np.full(len(B), 128), ratio)
    assert fit.n == 25  # B = N carries no information
    assert abs(fit.c - 6.0) < 2.5 * fit.stderr and fit.stderr < 0.1
    assert fit(128, 128) == pytest.approx(1.0) and fit(4, 128) == pytest.approx(1 + fit.c * (1 / 4 - 1 / 128))
    exact = fit_batch_ratio([8, 32], [128, 128], [1 + 2 * (1 / 8 - 1 / 128), 1 + 2 * (1 / 32 - 1 / 128)])
    assert exact.c == pytest.approx(2.0, rel=1e-12) and exact.stderr == pytest.approx(0, abs=1e-12)
    assert fit_batch_ratio([128], [128], [1.0]) is None


def test_wu_su_by_hand():
    # p = (128 - 8) / (8 * 127) = 15/127; q = 0.1 (12 * 112/127 + 50 * 15/127) = 209.4 / 127
    assert wu_su_p(128, 8) == pytest.approx(15 / 127, rel=1e-15)
    assert wu_su(0.1, 12.0, 50.0, 8, 128) == pytest.approx(209.4 / 127, rel=1e-12)
    assert wu_su(0.1, 12.0, 50.0, 1, 128) == pytest.approx(5.0)  # B = 1: lr trace(H)
    assert wu_su(0.1, 12.0, 50.0, 128, 128) == pytest.approx(1.2)  # B = N: lr lambda_max (GD)


def test_layer_sensitivity_ranks_and_error_bars():
    base = train(0.1, 8, 0)
    other = train(0.1, 8, 1)
    probes = [probe(base, {"layer_trace/w1": 10.0, "layer_trace_se/w1": 0.5, "layer_lambda_max/w1": 3.0,
                           "layer_trace/w2": 40.0, "layer_trace_se/w2": 2.0, "layer_lambda_max/w2": 5.0,
                           "layer_trace/net.0.weight": 1.0}),
              probe(other, {"layer_trace/w1": 14.0, "layer_trace_se/w1": 0.7, "layer_lambda_max/w1": 4.0,
                            "layer_trace/net.0.weight": 2.0})]
    frame = probe_frame(probes, [base, other])
    assert swept_columns(frame) == []  # a layer named net.0.weight is a metric, not a dotted param
    frame = frame.drop(columns="layer_trace/net.0.weight")
    layers = layer_table(frame)
    table = layer_sensitivity(layers).set_index("layer")
    assert list(table.index) == ["w2", "w1"] and list(table["rank"]) == [1, 2]
    assert table.loc["w2", ["trace", "trace_se", "lambda_max", "n"]].tolist() == [40.0, 2.0, 5.0, 1]  # Hutchinson se
    # w1 over two trials: mean 12, sample std of (10, 14) = 2 sqrt(2), standard error 2 sqrt(2) / sqrt(2) = 2
    assert table.loc["w1", "trace"] == 12.0 and table.loc["w1", "trace_se"] == pytest.approx(2.0, rel=1e-12)
    assert table.loc["w1", "lambda_max"] == 3.5


def test_probe_frame_joins_the_train_run_and_merges_its_probes():
    t = train(0.2, 16, 1, outcome="diverged", P=64)
    old_train = train(0.2, 16, 1, P=64)  # an older attempt's run, probed earlier
    old_train = RunRecord(run_id="older", status="FAILED", start_time=0, params=old_train.params,
                          tags={**old_train.tags, tags.ATTEMPT: "0"})
    probes = [probe(old_train, {"sharpness": 99.0}, start=1, run_id="p0"),
              probe(t, {"sharpness": 5.0, "hessian_trace": 20.0}, start=2, run_id="p1", n_examples=32),
              probe(t, {"sharpness": 5.5, "hessian_top_k/4": 1.0}, start=3, run_id="p2", n_examples=32),
              probe(t, {"sharpness": 7.0}, start=4, run_id="p3", matrix="ggn"),  # another matrix: left out
              probe(t, {"sharpness": 8.0}, start=5, run_id="p4", status="FAILED")]
    frame = probe_frame(probes, [t])
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.train_run, row.probe_run, row.probe_runs, row.matrix) == (t.run_id, "p2", "p2;p1", "full")
    assert (row.sharpness, row.hessian_trace, row["hessian_top_k/4"]) == (5.5, 20.0, 1.0)
    assert (row.lr, row.B, row.P, row.seed, row.optimizer, row.outcome) == (0.2, 16, 64, 1, "sgd", "diverged")
    assert row.N_probe == 32 and bool(row.lanczos_converged)
    ratios = batch_table(probe_frame([probe(t, {"batch_lambda_max_ratio/B8": 1.5, "batch_lambda_max_ratio/B32":
                                                 float("nan"), "batch_lambda_max_ratio/B16": 1.2})], [t]),
                         "batch_lambda_max_ratio")
    assert ratios[["b", "value"]].values.tolist() == [[8, 1.5], [16, 1.2]]


# --- the report of a probed sweep --------------------------------------------------------------------------------

LEVEL = {8: 0.4, 32: 0.7, 128: 0.98}  # end sharpness / (2/lr): full batch (B = P = 128) near the edge
LAYERS = {"net.0.weight": 30.0, "net.1.weight": 12.0, "readout": 3.0}


def probed_sweep():
    """SGD, lr {0.1, 0.2} x B {8, 32, 128} x seeds {0, 1}, P = 128; sharpness trajectories plateau at LEVEL[B] 2/lr,
    probes measure lambda = the last trajectory value, trace = 5 lambda, ratios 1 + 6 (1/b - 1/128), layers and
    (seed 0) a density. One more trial at lr = 0.4, B = 8 diverged (no probe)."""
    trains, probes, histories, densities = [], [], {}, {}
    rng = np.random.default_rng(1)
    for lr in (0.1, 0.2):
        for B in (8, 32, 128):
            for seed in (0, 1):
                history = plateau(lr, LEVEL[B], seed)
                t = train(lr, B, seed, metrics={"sharpness": history[-1][1], "train_loss": 0.01, "test_error": 0.2})
                histories[t.run_id] = {"sharpness": history,
                                       "train_loss": [(s, 1.0 / (1 + s)) for s, _ in history]}
                lam = history[-1][1]
                metrics = {"sharpness": lam, "hessian_trace": 5 * lam, "hessian_trace_se": 0.1}
                metrics.update({f"batch_lambda_max_ratio/B{b}": 1 + 6 * (1 / b - 1 / 128)
                                * (1 + 0.03 * rng.standard_normal()) for b in (4, 16, 64)})
                metrics.update({f"layer_trace/{k}": v * (1 + 0.1 * seed) for k, v in LAYERS.items()})
                metrics.update({f"layer_trace_se/{k}": 0.05 * v for k, v in LAYERS.items()})
                metrics.update({f"layer_lambda_max/{k}": v / 3 * (1 + 0.01 * rng.standard_normal())
                                for k, v in LAYERS.items()})
                p = probe(t, metrics, slq=4 if seed == 0 else 0)
                trains.append(t)
                probes.append(p)
                if seed == 0:
                    grid = np.linspace(-1, lam * 1.1, 200)
                    density = np.exp(-grid ** 2 / 0.02) + 0.01 * np.exp(-(grid - lam) ** 2 / 0.5)
                    densities[p.run_id] = read_density("eigenvalue,density\n" + "".join(
                        f"{g},{d}\n" for g, d in zip(grid, density / np.trapezoid(density, grid))))
    boom = train(0.4, 8, 0, outcome="diverged", metrics={"sharpness": 1e6})
    trains.append(boom)
    histories[boom.run_id] = {"sharpness": [(0, 1.0), (50, 1e3), (100, 1e6)], "train_loss": [(0, 1.0), (100, 1.7976931348623157e308)]}
    return trains, probes, histories, densities


def test_report_of_a_probed_sweep_draws_every_curvature_figure(tmp_path):
    trains, probes, histories, densities = probed_sweep()
    report = build_report(trains, "probed", tmp_path, probes=probes, histories=histories, densities=densities)
    names = {p.name for p in report.figures}
    assert names == {"sharpness_trajectories.png", "lambda_max_vs_B.png", "batch_ratio.png", "spectral_density.png",
                     "wu_su.png", "layer_sensitivity.png"}  # one B with a diverged lr: no lr_max figure
    assert all((tmp_path / n).read_bytes()[:8] == PNG_MAGIC for n in names)
    md = (tmp_path / "summary.md").read_text()
    assert "### Curvature" in md and "Probes: 12 probed trials (matrix: full; 0 with a Lanczos residual" in md
    # eos_ratio per (lr, B): LEVEL[B] within the +-3% oscillation, diverged run left out of the table
    runs = pd.read_csv(tmp_path / "trajectories.csv")
    assert len(runs) == 13
    ok = runs[runs["outcome"] != "diverged"]
    assert np.allclose(ok["eos_ratio"], ok["B"].map(LEVEL), atol=0.02)
    assert "| 0.1 | 128 | 2 |" in md and "| 0.4 |" not in md
    # lambda_max against B: seed means of the probes' sharpness
    cells = pd.read_csv(tmp_path / "lambda_max_vs_B.csv").set_index(["B", "lr"])
    expected = np.mean([plateau(0.2, LEVEL[32], s)[-1][1] for s in (0, 1)])
    assert cells.loc[(32, 0.2), "lambda_max_mean"] == pytest.approx(expected)
    assert "(12 trials from their probe, 0 from the last point of their sharpness trajectory" in md
    # batch ratio: 12 runs pooled per lr line? lines are the trained points (lr, B): 6 lines, each fitted
    ratio = pd.read_csv(tmp_path / "batch_ratio.csv")
    assert set(ratio["B_probe"]) == {4, 16, 64} and np.allclose(ratio["c"], 6.0, rtol=0.1)
    assert np.allclose(ratio["N"], 128)
    # Wu & Su: q = lr lambda (1 + 4p) = 2 LEVEL[B] (1 + 4p) x the tail wiggle of each seed's last point
    wu = pd.read_csv(tmp_path / "wu_su.csv")
    assert list(wu.columns[:3]) == ["B", "lr", "n_trials"]  # lines by lr only: no layer_*/net.0.weight "param"
    wu = wu.set_index(["B", "lr"])
    p8 = (128 - 8) / (8 * 127)
    q8 = np.mean([0.1 * plateau(0.1, LEVEL[8], s)[-1][1] * (1 + 4 * p8) for s in (0, 1)])
    assert wu.loc[(8, 0.1), "wu_su_mean"] == pytest.approx(q8, rel=1e-12)
    probes_csv = pd.read_csv(tmp_path / "probes.csv")
    q = probes_csv["wu_su"]
    assert f"- {(q <= 2).sum()} of the 12 probed SGD trials (diverged ones left out) are under 2" in md
    # layers: ranked by trace, seed-pooled means (1 + 0.1 seed) -> 1.05 x planted
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert list(layers["layer"]) == list(LAYERS) and np.allclose(layers["trace"], [1.05 * v for v in LAYERS.values()])
    assert {p.name for p in report.tables} == {"probes.csv", "trajectories.csv", "lambda_max_vs_B.csv",
                                               "batch_ratio.csv", "wu_su.csv", "layers.csv"}
    assert all(f"[{n}]({n})" in md for n in [*names, "probes.csv", "layers.csv"])


# --- a real store: metric histories (both readers) and `sgdlab report` end to end --------------------------------

def write_store(folder):
    """A SQLite MLflow store as the jobs leave it: sweep 'curv' with two SGD train runs (B = 8, 32) that logged a
    sharpness history, and one probe run of the B = 8 run with a spectral density. Returns (uri, runs)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from sgdlab.tracking.store import open_sweep

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    handle = open_sweep(uri, "curv")
    client = MlflowClient(uri)
    runs, logged = {}, {}
    for B, level in ((8, 0.5), (32, 0.9)):
        t = train(0.1, B, 0, P=64)
        run = client.create_run(handle.experiment_id, run_name=f"B={B}", tags={
            **t.tags, tags.SWEEP: "curv", tags.PARENT: handle.sweep_run_id})
        run_id = run.info.run_id
        history = [(s, level * 20 * min(1.0, s / 40)) for s in range(0, 101, 10)]
        loss = [(s, 1.0 / (1 + s)) for s in range(0, 101, 20)] + [(110, float("nan")), (120, float("inf"))]
        metrics = [Metric("sharpness", v, 1000 + s, s) for s, v in history]
        metrics += [Metric("train_loss", v, 1000 + s, s) for s, v in loss]
        metrics += [Metric("sharpness", 99.0, 5000, 100)]  # a second value at step 100, logged later
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in t.params.items()])
        client.set_terminated(run_id, "FINISHED")
        runs[B], logged[B] = run_id, (history + [(100, 99.0)], loss)
    p = probe(train(0.1, 8, 0, P=64), {"sharpness": 9.5, "hessian_trace": 40.0, "batch_lambda_max_ratio/B4": 1.8,
                                        "batch_lambda_max_ratio/B16": 1.2}, n_examples=64, slq=2)
    probe_run = client.create_run(handle.experiment_id, run_name="probe B=8", tags={
        **p.tags, tags.TRAIN_RUN: runs[8], tags.SWEEP: "curv", tags.PARENT: handle.sweep_run_id})
    client.log_batch(probe_run.info.run_id, metrics=[Metric(k, v, 2000, 100) for k, v in p.metrics.items()],
                     params=[Param(k, v) for k, v in p.params.items()], tags=[RunTag(tags.OUTCOME, "converged")])
    grid = np.linspace(-1, 12, 120)
    client.log_text(probe_run.info.run_id, "eigenvalue,density\n" + "".join(
        f"{g:.6g},{math.exp(-g * g) / math.sqrt(math.pi):.6g}\n" for g in grid), "spectrum/density.csv")
    client.set_terminated(probe_run.info.run_id, "FINISHED")
    return uri, runs, logged, probe_run.info.run_id


def same(a, b) -> bool:
    """Histories equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[r].keys() == b[r].keys() and all(len(a[r][k]) == len(b[r][k]) and all(
            s1 == s2 and (v1 == v2 or (math.isnan(v1) and math.isnan(v2)))
            for (s1, v1), (s2, v2) in zip(a[r][k], b[r][k])) for k in a[r]) for r in a)


def test_metric_histories_and_the_report_command_on_a_real_store(sweeps_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from sgdlab.tracking.histories import _client_histories, metric_histories

    uri, runs, logged, probe_run = write_store(tmp_path)
    keys = ["sharpness", "train_loss", "never_logged"]
    fast = metric_histories(uri, [runs[8], runs[32], runs[8]], keys)
    slow = _client_histories(uri, [runs[8], runs[32]], keys)
    assert same(fast, slow) and list(fast) == [runs[8], runs[32]]
    for B in (8, 32):
        history, loss = logged[B]
        assert fast[runs[B]]["sharpness"] == history and fast[runs[B]]["never_logged"] == []
        got = fast[runs[B]]["train_loss"]
        assert got[:-2] == loss[:-2] and math.isnan(got[-2][1]) and got[-1] == (120, 1.7976931348623157e308)
    assert metric_histories(f"sqlite:///{tmp_path / 'absent.db'}", [runs[8]], ["sharpness"]) == {
        runs[8]: {"sharpness": []}}
    assert metric_histories(uri, [], keys) == {}

    out = run_sgdlab("report", "curv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "report of 2 train and 1 probe runs" in out.stderr
    folder = tmp_path / "reports" / "curv"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["batch_ratio.png", "lambda_max_vs_B.png", "sharpness_trajectories.png", "spectral_density.png",
                    "wu_su.png"]
    md = (folder / "summary.md").read_text()
    assert "(1 trials from their probe, 1 from the last point of their sharpness trajectory" in md
    # B = 8 from its probe (9.5), B = 32 from its trajectory's last point (the later value at step 100: 99)
    cells = pd.read_csv(folder / "lambda_max_vs_B.csv").set_index("B")
    assert cells.loc[8, "lambda_max_mean"] == 9.5 and cells.loc[32, "lambda_max_mean"] == 99.0
    probes_csv = pd.read_csv(folder / "probes.csv")
    assert probes_csv["probe_run"].tolist() == [probe_run] and probes_csv["N_probe"].tolist() == [64]
    # p = (64 - 8) / (8 * 63) = 1/9: q = 0.1 (9.5 * 8/9 + 40 / 9)
    assert probes_csv["wu_su"].iloc[0] == pytest.approx(0.1 * (9.5 * 8 / 9 + 40 / 9), rel=1e-12)
    trajectories = pd.read_csv(folder / "trajectories.csv").set_index("B")
    assert trajectories.loc[8, "points"] == 12
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("curv")
    (sweep_run,) = client.search_runs([exp.experiment_id], "tags.`sgdlab.kind` = 'sweep'")
    attached = {f.path.split("/")[-1] for f in client.list_artifacts(sweep_run.info.run_id, "report")}
    assert {"probes.csv", "trajectories.csv", "spectral_density.png", "summary.md"} <= attached
