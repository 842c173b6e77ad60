"""The report's perceptron section: the SGD regime of every trial (analysis.perceptron_regime) and the P exponents
of w_par / ||w_perp|| and ||w - w0|| per (chi, T), fitted on the noise-dominated runs, next to the claim 1/(1+chi)
(analysis.perceptron).

Drawn for the records of model=perceptron on the teacher task (chi recorded, ||w - w0|| logged). Writes perceptron_regimes.csv (one
row per trial: its params, outcome, final w_par and ||w_perp||, P/d, B/B*, B*, the training points inside the
margin and the regime) and p_exponents.csv (analysis.perceptron.COLUMNS). summary.md gets the regime counts with
the criterion, a table of the regimes per (chi, T, P), the fitted exponents with the regime of their points and
how many converged runs were left out as outside it (or the flag 'all regimes', analysis.perceptron), and the
(chi, T) that have converged runs but too few P for a fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.perceptron import (CHI, METRICS, MIN_P, NORM, exponent_plot, norm_plot, p_exponents,
                                        regime_counts)
from sgdlab.analysis.perceptron_regime import MAX_FIRST_STEP_SHARE, MAX_MARGIN_POINTS, NOISE, with_regimes
from sgdlab.analysis.report_section import Files, Numbers, markdown_table, number_key

REGIME_COLUMNS = ("chi", "T", "alpha", "B", "P", "d", "seed", "data.seed", "status", "outcome", "steps", "w_par",
                  "w_perp", "P_over_d", "first_step_share", "B_star", "margin_points", "regime", "trial_id")


def _regime_lines(labelled: pd.DataFrame, out_dir: Path) -> list[str]:
    """The regime counts, the criterion and a table per (chi, T, P); perceptron_regimes.csv."""
    labelled[[c for c in REGIME_COLUMNS if c in labelled]].to_csv(out_dir / "perceptron_regimes.csv", index=False)
    lines = ["", f"Perceptron regimes ([perceptron_regimes.csv](perceptron_regimes.csv), analysis.perceptron_regime): "
                 f"a trial is noise-dominated when its first SGD step made at most {MAX_FIRST_STEP_SHARE:g} of its "
                 f"final w_par (B / B* = lr E|x_1| / (sqrt(d) w_par) <= {MAX_FIRST_STEP_SHARE:g}) and at most "
                 f"{MAX_MARGIN_POINTS:g} training points lie inside the margin (P Pr(|x_1| < sqrt(d) / (alpha "
                 f"w_par)) <= {MAX_MARGIN_POINTS:g}, T above the gradient-descent crossover): "
                 f"{regime_counts(labelled['regime'])} of {len(labelled)} trials."]
    rows = []
    for (chi, T, P), cell in labelled.groupby([CHI, "T", "P"], sort=True):
        known = cell.dropna(subset=["first_step_share"])
        P_over_d = cell["P_over_d"].iloc[0]
        rows.append([plots.number(chi), plots.number(T), plots.number(P),
                     f"{P_over_d:.3g}" if np.isfinite(P_over_d) else "-",
                     f"{(cell['regime'] == NOISE).sum()} / {len(cell)}",
                     f"{known['first_step_share'].median():.2g}" if len(known) else "-",
                     f"{known['margin_points'].median():.2g}" if len(known) else "-",
                     ", ".join(sorted(set(cell["regime"]) - {NOISE})) or "-"])
    return lines + ["", *markdown_table(["chi", "T", "P", "P/d", "noise-dominated", "B / B* (median)",
                                         "points in the margin (median)", "other regimes"], rows)]


def _exponent_row(r) -> str:
    interval = f"[{r.low:.3g}, {r.high:.3g}]" if np.isfinite(r.low) else "-"
    P_over_d = f"{r.P_over_d_min:.3g}-{r.P_over_d_max:.3g}" if np.isfinite(r.P_over_d_min) else "-"
    left_out = f" ({r.n_left_out} converged runs in other regimes left out)" if r.n_left_out else ""
    return (f"| {METRICS[r.metric]} | {plots.number(r.chi)} | {r.claim:.3g} | {plots.number(r.T)} | {r.exponent:.3g}"
            + (f" ± {r.exponent_se:.2g}" if np.isfinite(r.exponent_se) else "")
            + f" | {interval} | {r.n_replicas} | {r.n_P} | {P_over_d} | {r.points}{left_out} |")


def perceptron_section(frame: pd.DataFrame, swept: list[str], out_dir: Path,
                       numbers: Numbers) -> tuple[list[str], Files]:
    """Markdown lines and figures of the section (module docstring); adds the fitted exponents and their 68%
    intervals to `numbers`."""
    frame = frame[frame["model"] == "perceptron"]
    if not (frame[CHI].notna().any() and NORM in frame):  # not a teacher-perceptron sweep
        return [], []
    labelled = with_regimes(frame)
    lines = _regime_lines(labelled, out_dir)
    if "P" not in swept or frame["P"].nunique() < MIN_P:
        return lines + ["", f"- Perceptron P exponents: not computed (needs at least {MIN_P} values of P; here "
                            f"{frame['P'].nunique()})."], []
    table = p_exponents(frame)
    converged = labelled[(labelled["status"] == "finished") & (labelled["outcome"] == "converged")]
    unfitted = sorted(set(map(tuple, converged[[CHI, "T"]].to_numpy())) - set(zip(table[CHI], table["T"])))
    missing = [f"- chi = {plots.number(chi)}, T = {plots.number(T)}: no fit, no replica has converged runs at "
               f"{MIN_P} or more P." for chi, T in unfitted]
    if table.empty:
        return lines + ["", "- Perceptron P exponents: not computed.", *missing], []
    table.to_csv(out_dir / "p_exponents.csv", index=False)
    lines += ["", "Perceptron: b in metric ~ P^b at fixed chi and T, fitted per replica (seed and data.seed) on the "
                  f"converged noise-dominated runs (at least {MIN_P} P; where no replica has that many, on all its "
                  "converged runs, flagged 'all regimes'), mean ± s.e. and bootstrap 68% interval over replicas, next "
                  "to the claim 1/(1+chi) ([p_exponents.csv](p_exponents.csv)):", "",
              "| metric | chi | 1/(1+chi) | T | b | 68% interval | replicas | P values | P/d | points |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              *map(_exponent_row, table.itertuples())]
    if missing:
        lines += ["", *missing]
    for r in table.itertuples():
        where = (r.metric, f"chi {plots.number(r.chi)}", f"T {plots.number(r.T)}",
                 "all regimes" if r.all_regimes else "")
        numbers.update({number_key("perceptron_exponent", *where): r.exponent,
                        number_key("perceptron_exponent_low", *where): r.low,
                        number_key("perceptron_exponent_high", *where): r.high})
    figures = [(exponent_plot(table, out_dir / "p_exponent_vs_chi.png"),
                "the fitted P exponents (w_par / ||w_perp||: o, ||w - w0||: s; open: not noise-dominated) against "
                "1/(1+chi), one colour per T"),
               (norm_plot(frame, out_dir / "norm_vs_P.png"),
                "||w - w0|| / T against P, one panel per chi, one line per T (converged runs)")]
    return lines, figures
