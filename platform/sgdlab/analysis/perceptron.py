"""The perceptron's P exponents (Sclocchi, Geiger & Wyart 2023): on the chi-depleted teacher task (density of
|x_1| ~ |x_1|^chi near the boundary x_1 = 0), SGD at temperature T in the noise-dominated regime ends with
w_par / ||w_perp|| ~ P^b and ||w - w0|| ~ T P^b, b = 1/(1+chi), where w - w0 = w_par e_1 + w_perp in the teacher's
frame (training.pack.teacher_frame). The ratio is the observable the theory is written in; ||w - w0|| mixes
w_par with ||w_perp|| ~ T sqrt(d), nearly flat in P, and its exponent is biased low at small P/d.

p_exponents: for each metric of METRICS the frame holds, each (chi, T) and each replica (a seed and, when it
varies, a data.seed), b_r = the least-squares slope of log metric against log P (fits.fit_power_law) over that
replica's converged runs in the noise-dominated regime (analysis.perceptron_regime), when they cover at least
MIN_P values of P. A run stopped by max_steps has not fitted its data and a diverged one has no norm: both are
left out; so are converged runs in another regime (counted in n_left_out), while runs whose regime cannot be told
(records without w_par or data.dim) are fitted and the row's `points` says 'unknown'. Where no replica has MIN_P
such P, all converged runs are fitted and the row is flagged (all_regimes, and `points` counts their regimes): a
number outside the claim's regime, drawn with open markers. Over the replicas: b = mean of b_r, its standard error
std/sqrt(n) (ddof = 1, scipy.stats.sem) and a bootstrap 68% interval (scipy.stats.bootstrap: the 15.9 and 84.1
percentiles of the mean of N_BOOTSTRAP resamples of the replicas, with replacement; NaN for one replica). In the
noise-dominated regime ||w - w0|| / T does not depend on T: norm_plot draws one line per T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sgdlab.analysis import plots
from sgdlab.analysis.fits import fit_power_law
from sgdlab.analysis.frames import aggregate
from sgdlab.analysis.perceptron_regime import NOISE, UNKNOWN, with_regimes

CHI = "chi"
METRICS = {"w_ratio": "w_par / ||w_perp||", "weight_delta": "||w - w0||"}  # fitted when recorded, in this order
NORM = "weight_delta"
MIN_P = 3
N_BOOTSTRAP = 2000
REPLICA = ("seed", "data.seed")  # a replica: the initialization and batches, and the data set where it varies
COLUMNS = ("metric", "chi", "T", "claim", "exponent", "exponent_se", "low", "high", "n_replicas", "n_P", "points",
           "all_regimes", "n_left_out", "P_over_d_min", "P_over_d_max")


def claimed_exponent(chi) -> np.ndarray:
    """b = 1/(1+chi)."""
    return 1.0 / (1.0 + np.asarray(chi, dtype=float))


def _converged(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    keep = (frame["status"] == "finished") & (frame["outcome"] == "converged")
    return frame[keep & np.isfinite(frame[metric]) & (frame[metric] > 0)]


def bootstrap_interval(values, seed: int = 0) -> tuple[float, float]:
    """The 68% bootstrap interval of the mean of `values` (NaN, NaN for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.nan, np.nan
    interval = stats.bootstrap((values,), np.mean, n_resamples=N_BOOTSTRAP, confidence_level=0.6827,
                               method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def _replica_slopes(runs: pd.DataFrame, metric: str, replica: list[str]) -> tuple[list[float], list[pd.DataFrame]]:
    """b_r of each replica with at least MIN_P values of P among `runs`, and the runs of those replicas."""
    fits = [(fit_power_law(r["P"], r[metric]).exponent, r) for _, r in runs.groupby(replica, sort=True)
            if r["P"].nunique() >= MIN_P]
    return [b for b, _ in fits], [r for _, r in fits]


def regime_counts(regimes: pd.Series) -> str:
    """'12 noise-dominated, 4 large first step': noise-dominated first, then the others alphabetically."""
    counts = regimes.value_counts()
    return ", ".join(f"{counts[r]} {r}" for r in sorted(counts.index, key=lambda r: (r != NOISE, r)))


def p_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, chi, T) with at least one replica fit (module docstring); columns COLUMNS, n_P the
    most P values a replica's fit used, points the regime of the fitted runs ('noise-dominated', 'unknown', both, or
    for an all_regimes row the count of each), P_over_d_min and _max the range of P/d over the fitted runs."""
    replica = [c for c in REPLICA if c in frame]
    labelled = with_regimes(frame)
    rows = []
    for metric in (m for m in METRICS if m in frame):
        for (chi, T), cell in _converged(labelled, metric).groupby([CHI, "T"], sort=True):
            kept = cell[cell["regime"].isin([NOISE, UNKNOWN])]
            slopes, fitted = _replica_slopes(kept, metric, replica)
            all_regimes = not slopes
            if all_regimes:
                slopes, fitted = _replica_slopes(cell, metric, replica)
            if slopes:
                se = stats.sem(slopes) if len(slopes) > 1 else np.nan
                low, high = bootstrap_interval(slopes)
                runs = pd.concat(fitted)
                points = ("all regimes: " + regime_counts(runs["regime"]) if all_regimes else
                          " and ".join(r for r in (NOISE, UNKNOWN) if (runs["regime"] == r).any()))
                rows.append({"metric": metric, "chi": chi, "T": T, "claim": float(claimed_exponent(chi)),
                             "exponent": np.mean(slopes), "exponent_se": se, "low": low, "high": high,
                             "n_replicas": len(slopes), "n_P": max(r["P"].nunique() for r in fitted),
                             "points": points, "all_regimes": all_regimes,
                             "n_left_out": 0 if all_regimes else len(cell) - len(kept),
                             "P_over_d_min": runs["P_over_d"].min(), "P_over_d_max": runs["P_over_d"].max()})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def exponent_plot(table: pd.DataFrame, path: Path) -> Path:
    """The fitted b with its bootstrap 68% interval against 1/(1+chi): one colour per T, one marker per metric
    (o the ratio w_par / ||w_perp||, s ||w - w0||), open for a fit outside the noise-dominated regime
    (all_regimes), and the claim b = 1/(1+chi)."""
    series = sorted({(m, T) for m, T in zip(table["metric"], table["T"])}, key=lambda k: (list(METRICS).index(k[0]),
                                                                                         k[1]))
    temps = sorted(table["T"].unique())
    shift = 0.012 * (np.arange(len(series)) - (len(series) - 1) / 2)  # side by side at each chi
    with plots.styled():
        fig, (ax,) = plots.new_figure()
        claims = np.array(sorted(table["claim"].unique()))
        line = np.linspace(claims.min() - 0.1, claims.max() + 0.1, 2)
        ax.plot(line, line, "--", color="0.4", label="claim: b = 1/(1+chi)")
        for i, (metric, T) in enumerate(series):
            part = table[(table["metric"] == metric) & (table["T"] == T)]
            for outside, sub in part.groupby(part["all_regimes"].astype(bool)):
                interval = [(sub["exponent"] - sub["low"]).fillna(0), (sub["high"] - sub["exponent"]).fillna(0)]
                ax.errorbar(sub["claim"] + shift[i], sub["exponent"], yerr=interval,
                            fmt="o" if metric == "w_ratio" else "s", color=f"C{temps.index(T) % 10}", capsize=2,
                            mfc="none" if outside else None, label=f"{METRICS[metric]}, T = {plots.number(T)}"
                            + (" (not noise-dominated)" if outside else ""))
        ax.set_xticks(claims, [f"{c:.3g}\n(chi = {plots.number(chi)})" for c, chi in
                               table.groupby("claim")["chi"].first().items()])
        ax.set(xlabel="1/(1+chi)", ylabel="fitted b in metric ~ P^b (bar: 68% bootstrap)",
               title="perceptron: P exponent")
        ax.legend(fontsize="small")
        return plots.save(fig, path)


def norm_plot(frame: pd.DataFrame, path: Path) -> Path:
    """||w - w0|| / T (seed mean ± s.e. of the converged runs) against P, one panel per chi, one line per T."""
    runs = _converged(frame, NORM)
    cells = aggregate(runs.assign(norm_over_T=runs[NORM] / runs["T"]), by=[CHI, "T", "P"],
                      metrics=["norm_over_T"])
    chis = sorted(cells[CHI].unique())
    with plots.styled():
        fig, axes = plots.new_figure(ncols=len(chis))
        for ax, chi in zip(axes, chis):
            for i, (T, part) in enumerate(cells[cells[CHI] == chi].groupby("T", sort=True)):
                ax.errorbar(part["P"], part["norm_over_T_mean"], yerr=part["norm_over_T_se"], fmt="o-",
                            color=f"C{i}", label=f"T = {plots.number(T)}")
            ax.set(xscale="log", yscale="log", xlabel=plots.label("P"), ylabel="||w - w0|| / T",
                   title=f"chi = {plots.number(chi)} (claim: slope {claimed_exponent(chi):.3g})")
            plots.grid_ticks(ax.xaxis, cells["P"].unique(), 2)
            ax.legend()
        return plots.save(fig, path)
