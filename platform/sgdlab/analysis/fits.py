"""Fits: power laws y = a x^b, and the temperature T_c where SGD noise starts to move the weights.

Power law: ordinary least squares of log y = log a + b log x (scipy.stats.linregress) over the points with finite,
positive x and y, at least MIN_FIT_POINTS distinct x (two points determine a line exactly and say nothing of a
power law). With u = log x, S_uu = sum (u - mean u)^2 and residual sum of squares RSS, the exponent's standard
error is sqrt(RSS / (n - 2) / S_uu) (the regression covariance).

T_c (Sclocchi, Geiger & Wyart 2023): at small T the seed-averaged weight change ||w - w0|| / ||w0|| sits on a
plateau (gradient-flow limit) and grows as a power of T above T_c. Criterion: plateau = mean weight change at
the `n_plateau` smallest temperatures; T_c = where the weight change first crosses factor x plateau upwards
(the first grid point above it whose predecessor is not), interpolated linearly in (log T, log weight change)
between those two grid points. No crossing within the grid gives NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from sgdlab.analysis.frames import aggregate

FACTOR = 2.0
N_PLATEAU = 2
MIN_FIT_POINTS = 3  # distinct x values of a power-law fit


@dataclass(frozen=True)
class PowerLaw:
    """y = prefactor * x ** exponent, fitted to n points; stderr is the exponent's standard error."""
    exponent: float
    stderr: float
    prefactor: float
    n: int

    def __call__(self, x) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent

    def exponent_text(self) -> str:
        """'b = -0.518 ± 0.079', or 'b = -0.518' without an error bar."""
        return f"b = {self.exponent:.3g}" + (f" ± {self.stderr:.2g}" if math.isfinite(self.stderr) else "")

    def describe(self, y: str = "y", x: str = "x") -> str:
        """e.g. 'T_c ~ P^b with b = -0.518 ± 0.079 (3 points)'."""
        return f"{y} ~ {x}^b with {self.exponent_text()} ({self.n} points)"


def fit_power_law(x, y) -> PowerLaw:
    """Least squares in log-log space; points with a non-finite or non-positive x or y are left out; ValueError
    with fewer than MIN_FIT_POINTS distinct x values left (callers check first and say why a fit is missing)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    u, v = np.log(x[keep]), np.log(y[keep])
    if len(np.unique(u)) < MIN_FIT_POINTS:
        raise ValueError(f"a power-law fit needs at least {MIN_FIT_POINTS} distinct positive x values, got "
                         f"{len(np.unique(u))}")
    line = stats.linregress(u, v)
    return PowerLaw(exponent=float(line.slope), stderr=float(line.stderr), prefactor=math.exp(line.intercept),
                    n=len(u))


def critical_temperature(T, weight_change, factor: float = FACTOR, n_plateau: int = N_PLATEAU) -> float:
    """T_c of one weight-change curve (any order; non-finite or non-positive points left out), as above."""
    T, w = np.asarray(T, dtype=float), np.asarray(weight_change, dtype=float)
    keep = np.isfinite(T) & np.isfinite(w) & (T > 0) & (w > 0)
    order = np.argsort(T[keep])
    T, w = T[keep][order], w[keep][order]
    if len(T) <= n_plateau:
        return math.nan
    threshold = factor * w[:n_plateau].mean()
    crossings = np.flatnonzero((w[:-1] <= threshold) & (w[1:] > threshold))
    if len(crossings) == 0:
        return math.nan
    i = crossings[0]
    fraction = (math.log(threshold) - math.log(w[i])) / (math.log(w[i + 1]) - math.log(w[i]))
    return float(T[i] * (T[i + 1] / T[i]) ** fraction)


def critical_temperatures(frame: pd.DataFrame, alpha: float | None = None, factor: float = FACTOR,
                          n_plateau: int = N_PLATEAU) -> pd.DataFrame:
    """T_c for each P from a trial frame, at one alpha (default: the largest, the laziest).

    The weight change is averaged over seeds (finished, non-diverged trials) at each (P, T) first.
    Columns: P, alpha, T_c, plateau (mean weight change at the n_plateau smallest T), n_T (temperatures used).
    """
    alpha = frame["alpha"].max() if alpha is None else alpha
    curves = aggregate(frame[frame["alpha"] == alpha], by=["P", "T"], metrics=["weight_change"])
    rows = []
    for P, curve in curves.groupby("P", sort=True):
        curve = curve[curve["weight_change_mean"] > 0].sort_values("T")
        rows.append({"P": P, "alpha": alpha,
                     "T_c": critical_temperature(curve["T"], curve["weight_change_mean"], factor, n_plateau),
                     "plateau": curve["weight_change_mean"].head(n_plateau).mean(), "n_T": len(curve)})
    return pd.DataFrame(rows, columns=["P", "alpha", "T_c", "plateau", "n_T"])
