"""Hessian spectra: the mini-batch excess of the top eigenvalue, and spectral densities.

Mini-batch excess (Granziol et al. 2022). A probe measures, at a trained point, r(B) = E[lambda_max(H_B)] /
lambda_max(H) for mini-batch Hessians H_B of B of the N probe examples (metric batch_lambda_max_ratio/B<b>).
r >= 1 and the excess shrinks as B grows, roughly like r(B) = 1 + c (1/B - 1/N) (r(N) = 1). c is fitted by
least squares through the origin of r - 1 against x = 1/B - 1/N over every measured (run, B):
c = sum x (r - 1) / sum x^2, standard error sqrt(RSS / (n - 1) / sum x^2) (NaN for one point); points with
x = 0 (B = N) carry no information on c and are left out.

Spectral densities come from stochastic Lanczos quadrature (probe artifact spectrum/density.csv: columns
eigenvalue, density, the Gaussian-broadened Ritz values weighted by squared first components).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

DENSITY_COLUMNS = ("eigenvalue", "density")
DENSITY_FLOOR = 1e-7  # a density axis runs down to this fraction of the largest density


@dataclass(frozen=True)
class BatchRatioFit:
    """r(B) = 1 + c (1/B - 1/N), c fitted from n points with standard error stderr."""
    c: float
    stderr: float
    n: int

    def __call__(self, B, N) -> np.ndarray:
        return 1 + self.c * (1 / np.asarray(B, dtype=float) - 1 / np.asarray(N, dtype=float))

    def describe(self) -> str:
        """'c = 6.3 ± 0.41 (12 points)'."""
        error = f" ± {self.stderr:.2g}" if math.isfinite(self.stderr) else ""
        return f"c = {self.c:.3g}{error} ({self.n} points)"


def fit_batch_ratio(B, N, ratio) -> BatchRatioFit | None:
    """Least squares of ratio - 1 = c (1/B - 1/N) through the origin; None without a point with B != N."""
    B, N, r = (np.asarray(v, dtype=float) for v in (B, N, ratio))
    x = 1 / B - 1 / N
    keep = np.isfinite(x) & np.isfinite(r) & (np.abs(x) > 1e-15)
    x, y = x[keep], r[keep] - 1
    if len(x) == 0:
        return None
    s_xx = x @ x
    c = float(x @ y / s_xx)
    residual = y - c * x
    stderr = math.sqrt(residual @ residual / (len(x) - 1) / s_xx) if len(x) > 1 else math.nan
    return BatchRatioFit(c=c, stderr=stderr, n=len(x))


def read_density(data: bytes | str) -> pd.DataFrame:
    """A spectrum/density.csv artifact as a table (eigenvalue, density) sorted by eigenvalue; ValueError if the
    columns are not there or no row is finite."""
    text = data.decode() if isinstance(data, bytes) else data
    table = pd.read_csv(io.StringIO(text))
    if not set(DENSITY_COLUMNS) <= set(table.columns):
        raise ValueError(f"density table needs columns {', '.join(DENSITY_COLUMNS)}, has {', '.join(table.columns)}")
    table = table[list(DENSITY_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    table = table[np.isfinite(table).all(axis=1)].sort_values("eigenvalue").reset_index(drop=True)
    if table.empty:
        raise ValueError("density table has no finite row")
    return table


def density_mass(table: pd.DataFrame) -> float:
    """Integral of the density over the eigenvalue grid (trapezoid rule); about 1 for a normalized density."""
    return float(np.trapezoid(table["density"], table["eigenvalue"]))
