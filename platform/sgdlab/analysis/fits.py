"""Fits: power laws y = a x^b (one or two variables), and the temperatures where a curve leaves its small-T value.

Power law: ordinary least squares of log y = log a + b log x (scipy.stats.linregress) over the points with finite,
positive x and y, at least MIN_FIT_POINTS distinct x (two points determine a line exactly and say nothing of a
power law). With u = log x, S_uu = sum (u - mean u)^2 and residual sum of squares RSS, the exponent's standard
error is sqrt(RSS / (n - 2) / S_uu) (the regression covariance). Product law y = a x1^b1 x2^b2: least squares of
log y on (1, log x1, log x2), standard errors from sigma^2 (X^T X)^-1 with sigma^2 = RSS / (n - 3).

Crossing temperatures of one curve over a T grid (Sclocchi, Geiger & Wyart 2023; any order of the points; T_c is
NaN where the curve does not cross inside the grid, or already starts beyond the level):
- crossing_temperature: the first T where y rises above a fixed level (the first grid point above it whose
  predecessor is not), interpolated linearly in (log T, log y) between those two points. With y the relative
  weight change ||w - w0|| / ||w0|| and a level c that does not depend on P, this is the kernel-escape T_c.
- departure_temperature: the first T where |change| rises above a tolerance, interpolated linearly in
  (log T, |change|). With change the seed-paired test error minus its small-T value, the performance T_c: both
  directions count (noise that helps and noise that hurts); or one direction only (change or -change).
- plateau_crossing: crossing_temperature at factor x the mean of the n_plateau smallest-T values. A DIAGNOSTIC,
  not T_c: the plateau itself grows with P, so its P dependence mixes into this temperature's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

FACTOR = 2.0  # plateau_crossing's diagnostic level: FACTOR x the plateau
N_PLATEAU = 2  # smallest temperatures that make the plateau
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


@dataclass(frozen=True)
class ProductLaw:
    """y = prefactor * x1 ** exponents[0] * x2 ** exponents[1], fitted to n points, with standard errors."""
    exponents: tuple[float, float]
    stderrs: tuple[float, float]
    prefactor: float
    n: int


def fit_product_law(x1, x2, y) -> ProductLaw:
    """Least squares of log y on (1, log x1, log x2) over the finite positive points; ValueError with fewer than
    MIN_FIT_POINTS distinct values of x1 or 2 of x2, or fewer than 4 points (no residual left)."""
    x1, x2, y = (np.asarray(v, dtype=float) for v in (x1, x2, y))
    keep = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y) & (x1 > 0) & (x2 > 0) & (y > 0)
    u1, u2, v = np.log(x1[keep]), np.log(x2[keep]), np.log(y[keep])
    if len(np.unique(u1)) < MIN_FIT_POINTS or len(np.unique(u2)) < 2 or len(v) < 4:
        raise ValueError(f"a product-law fit needs {MIN_FIT_POINTS} distinct x1, 2 distinct x2 and 4 points, got "
                         f"{len(np.unique(u1))}, {len(np.unique(u2))} and {len(v)}")
    design = np.column_stack([np.ones_like(u1), u1, u2])
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    residual = v - design @ coef
    covariance = residual @ residual / (len(v) - 3) * np.linalg.inv(design.T @ design)
    errors = np.sqrt(np.diag(covariance))
    return ProductLaw(exponents=(float(coef[1]), float(coef[2])), stderrs=(float(errors[1]), float(errors[2])),
                      prefactor=math.exp(coef[0]), n=len(v))


def _sorted_finite(T, y) -> tuple[np.ndarray, np.ndarray]:
    T, y = np.asarray(T, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(T) & np.isfinite(y) & (T > 0)
    order = np.argsort(T[keep])
    return T[keep][order], y[keep][order]


def _first_rise(T: np.ndarray, y: np.ndarray, level: float, log_y: bool) -> float:
    """Where y first goes from <= level to > level between neighbouring grid points, interpolated in log T (and
    log y if log_y); NaN if it never does or already starts above the level."""
    if len(T) < 2 or not math.isfinite(level) or y[0] > level:
        return math.nan
    crossings = np.flatnonzero((y[:-1] <= level) & (y[1:] > level))
    if len(crossings) == 0:
        return math.nan
    i = crossings[0]
    lo, hi, at = (np.log([y[i], y[i + 1], level]) if log_y else (y[i], y[i + 1], level))
    return float(T[i] * (T[i + 1] / T[i]) ** ((at - lo) / (hi - lo)))


def crossing_temperature(T, y, level: float) -> float:
    """The first T where the curve y(T) (positive values) rises above `level` (module docstring)."""
    T, y = _sorted_finite(T, y)
    keep = y > 0
    return _first_rise(T[keep], y[keep], level, log_y=True) if level > 0 else math.nan


def departure_temperature(T, change, tolerance: float, direction: int = 0) -> float:
    """The first T where |change(T)| (direction 0), change (+1) or -change (-1) rises above `tolerance` (module
    docstring)."""
    T, change = _sorted_finite(T, change)
    return _first_rise(T, np.abs(change) if direction == 0 else direction * change, tolerance, log_y=False)


def plateau_crossing(T, y, factor: float = FACTOR, n_plateau: int = N_PLATEAU) -> float:
    """The diagnostic crossing of factor x the plateau (the mean of the n_plateau smallest-T values)."""
    T, y = _sorted_finite(T, y)
    keep = y > 0
    T, y = T[keep], y[keep]
    if len(T) <= n_plateau:
        return math.nan
    return _first_rise(T, y, factor * y[:n_plateau].mean(), log_y=True)
