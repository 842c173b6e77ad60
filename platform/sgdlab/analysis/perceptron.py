"""The perceptron's P exponents (Sclocchi, Geiger & Wyart 2023): on the chi-depleted teacher task (density of
|x_1| ~ |x_1|^chi near the boundary x_1 = 0), SGD at temperature T in the noise-dominated regime ends with
w_par / ||w_perp|| ~ P^b and ||w - w0|| ~ T P^b, b = 1/(1+chi), where w - w0 = w_par e_1 + w_perp in the teacher's
frame (training.pack.teacher_frame). The ratio is the observable the theory is written in; ||w - w0|| mixes
w_par with ||w_perp|| ~ T sqrt(d), nearly flat in P, and its exponent is biased low at small P/d.

p_exponents: for each metric of METRICS the frame holds, each (chi, T) and each replica (a seed and, when it
varies, a data.seed), b_r = the least-squares slope of log metric against log P (fits.fit_power_law) over that
replica's converged runs, when they cover at least MIN_P values of P. A run stopped by max_steps has not fitted its
data and a diverged one has no norm: both are left out. Over the replicas: b = mean of b_r, its standard error
std/sqrt(n) (ddof = 1, scipy.stats.sem) and a bootstrap 68% interval (scipy.stats.bootstrap: the 15.9 and 84.1
percentiles of the mean of N_BOOTSTRAP resamples of the replicas, with replacement; NaN for one replica).
Whether a T is in the noise-dominated regime is read off norm_plot: there ||w - w0|| / T does not depend on T,
and the lines of the different T fall on one another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sgdlab.analysis import plots
from sgdlab.analysis.fits import fit_power_law
from sgdlab.analysis.frames import aggregate

CHI = "chi"
METRICS = {"w_ratio": "w_par / ||w_perp||", "weight_delta": "||w - w0||"}  # fitted when recorded, in this order
NORM = "weight_delta"
MIN_P = 3
N_BOOTSTRAP = 2000
REPLICA = ("seed", "data.seed")  # a replica: the initialization and batches, and the data set where it varies
COLUMNS = ("metric", "chi", "T", "claim", "exponent", "exponent_se", "low", "high", "n_replicas", "n_P")


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


def p_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, chi, T) with at least one replica fit (module docstring); columns COLUMNS, n_P the
    most P values a replica's fit used."""
    replica = [c for c in REPLICA if c in frame]
    rows = []
    for metric in (m for m in METRICS if m in frame):
        for (chi, T), cell in _converged(frame, metric).groupby([CHI, "T"], sort=True):
            slopes, n_P = [], 0
            for _, runs in cell.groupby(replica, sort=True):
                if runs["P"].nunique() >= MIN_P:
                    slopes.append(fit_power_law(runs["P"], runs[metric]).exponent)
                    n_P = max(n_P, runs["P"].nunique())
            if slopes:
                se = stats.sem(slopes) if len(slopes) > 1 else np.nan
                low, high = bootstrap_interval(slopes)
                rows.append({"metric": metric, "chi": chi, "T": T, "claim": float(claimed_exponent(chi)),
                             "exponent": np.mean(slopes), "exponent_se": se, "low": low, "high": high,
                             "n_replicas": len(slopes), "n_P": n_P})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def exponent_plot(table: pd.DataFrame, path: Path) -> Path:
    """The fitted b with its bootstrap 68% interval against 1/(1+chi): one colour per T, one marker per metric
    (o the ratio w_par / ||w_perp||, s ||w - w0||), and the claim b = 1/(1+chi)."""
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
            interval = [(part["exponent"] - part["low"]).fillna(0), (part["high"] - part["exponent"]).fillna(0)]
            ax.errorbar(part["claim"] + shift[i], part["exponent"], yerr=interval,
                        fmt="o" if metric == "w_ratio" else "s", color=f"C{temps.index(T) % 10}", capsize=2,
                        label=f"{METRICS[metric]}, T = {plots.number(T)}")
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
