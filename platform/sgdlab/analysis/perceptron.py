"""The perceptron's weight norm against P (Sclocchi, Geiger & Wyart 2023): on the chi-depleted teacher task
(density of |x_1| ~ |x_1|^chi near the boundary x_1 = 0), SGD at temperature T above the noise-free regime ends
with ||w - w0|| ~ T P^b, b = 1/(1+chi).

p_exponents: for each (chi, T) and each seed, b_seed = the least-squares slope of log ||w - w0|| (the metric
`weight_delta`) against log P (fits.fit_power_law) over that seed's converged runs, when they cover at least
MIN_P values of P. A run stopped by max_steps has not fitted its data (its norm is still growing) and a diverged
one has no norm: both are left out. Over the seeds: b = mean of b_seed, standard error std/sqrt(n) (ddof = 1;
NaN for one seed).
Whether a T is above the noise-free regime is read off norm_plot: there ||w - w0|| / T does not depend on T,
and the lines of the different T fall on one another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.fits import fit_power_law
from sgdlab.analysis.frames import aggregate

CHI = "data.chi"
METRIC = "weight_delta"
MIN_P = 3
COLUMNS = ("chi", "T", "claim", "exponent", "exponent_se", "n_seeds", "n_P")


def claimed_exponent(chi) -> np.ndarray:
    """b = 1/(1+chi)."""
    return 1.0 / (1.0 + np.asarray(chi, dtype=float))


def _converged(frame: pd.DataFrame) -> pd.DataFrame:
    keep = (frame["status"] == "finished") & (frame["outcome"] == "converged")
    return frame[keep & np.isfinite(frame[METRIC]) & (frame[METRIC] > 0)]


def p_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (chi, T) with at least one seed fit (module docstring); columns COLUMNS, n_P the most P
    values a seed's fit used."""
    rows = []
    for (chi, T), cell in _converged(frame).groupby([CHI, "T"], sort=True):
        slopes, n_P = [], 0
        for _, runs in cell.groupby("seed", sort=True):
            if runs["P"].nunique() >= MIN_P:
                slopes.append(fit_power_law(runs["P"], runs[METRIC]).exponent)
                n_P = max(n_P, runs["P"].nunique())
        if slopes:
            se = np.std(slopes, ddof=1) / np.sqrt(len(slopes)) if len(slopes) > 1 else np.nan
            rows.append({"chi": chi, "T": T, "claim": float(claimed_exponent(chi)), "exponent": np.mean(slopes),
                         "exponent_se": se, "n_seeds": len(slopes), "n_P": n_P})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def exponent_plot(table: pd.DataFrame, path: Path) -> Path:
    """The fitted b ± its standard error against 1/(1+chi), one colour per T, and the claim b = 1/(1+chi)."""
    temps = sorted(table["T"].unique())
    shift = 0.012 * (np.arange(len(temps)) - (len(temps) - 1) / 2)  # side by side at each chi
    with plots.styled():
        fig, (ax,) = plots.new_figure()
        claims = np.array(sorted(table["claim"].unique()))
        line = np.linspace(claims.min() - 0.1, claims.max() + 0.1, 2)
        ax.plot(line, line, "--", color="0.4", label="claim: b = 1/(1+chi)")
        for i, T in enumerate(temps):
            part = table[table["T"] == T]
            ax.errorbar(part["claim"] + shift[i], part["exponent"], yerr=part["exponent_se"], fmt="o",
                        color=f"C{i}", label=f"T = {plots.number(T)}")
        ax.set_xticks(claims, [f"{c:.3g}\n(chi = {plots.number(chi)})" for c, chi in
                               table.groupby("claim")["chi"].first().items()])
        ax.set(xlabel="1/(1+chi)", ylabel="fitted b in ||w - w0|| ~ P^b", title="perceptron: P exponent")
        ax.legend()
        return plots.save(fig, path)


def norm_plot(frame: pd.DataFrame, path: Path) -> Path:
    """||w - w0|| / T (seed mean ± s.e. of the converged runs) against P, one panel per chi, one line per T."""
    runs = _converged(frame)
    cells = aggregate(runs.assign(norm_over_T=runs[METRIC] / runs["T"]), by=[CHI, "T", "P"],
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
