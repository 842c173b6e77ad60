"""Seed-bootstrap intervals of T_c(P) and of the P exponents that decide the sign of T_c ~ P^a.

T_c is where the seed-averaged weight change leaves its small-T plateau (fits.critical_temperature). If the
plateau grows as P^p and the noisy regime as P^q (weight change ~ T^k P^q above T_c), the crossing moves as
a = (p - q) / k: T_c decreases with P only when the noisy regime grows faster with P than the plateau.

A bootstrap replicate resamples, at each P independently, the seeds with replacement (a seed's curve over T goes
whole), averages the weight change over the drawn seeds at each T and computes from these curves: T_c at each P,
the fitted exponent of T_c ~ P^a, that of the plateau (the mean weight change at the N_PLATEAU smallest T) and that
of the noisy regime (the weight change at the largest T where every P has a value). The 68% interval is the 15.9th
to 84.1st percentile over the N_BOOT replicates in which the quantity is defined. The point values are those of
all seeds (the same as fits.critical_temperatures).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sgdlab.analysis.fits import FACTOR, MIN_FIT_POINTS, N_PLATEAU, critical_temperature, fit_power_law

N_BOOT = 1000
PERCENTILES = (15.9, 84.1)


@dataclass
class TcUncertainty:
    per_P: pd.DataFrame  # P, T_c, T_c_low, T_c_high, plateau, noisy, n_seeds
    exponents: pd.DataFrame  # quantity (T_c | plateau | noisy), exponent, low, high, n_P, defined (replicates)
    noisy_T: float  # the temperature whose weight change stands for the noisy regime


def seed_curves(frame: pd.DataFrame) -> dict[float, pd.DataFrame]:
    """{P: a table of weight change, one row per seed and one column per T} of the finished, non-diverged trials."""
    usable = frame[(frame["status"] == "finished") & (frame["outcome"] != "diverged")
                   & np.isfinite(pd.to_numeric(frame["weight_change"], errors="coerce"))]
    return {P: part.pivot_table(index="seed", columns="T", values="weight_change", aggfunc="mean")
            for P, part in usable.groupby("P", sort=True)}


def _quantities(curves: dict[float, np.ndarray], temperatures: dict[float, np.ndarray], noisy_T: float) -> dict:
    """T_c per P and the three exponents from seed-averaged curves {P: mean weight change at temperatures[P]}."""
    Ps = sorted(curves)
    tc = {P: critical_temperature(temperatures[P], curves[P], FACTOR, N_PLATEAU) for P in Ps}
    plateau = {P: np.nanmean(curves[P][np.argsort(temperatures[P])][:N_PLATEAU]) for P in Ps}
    noisy = {P: float(curves[P][list(temperatures[P]).index(noisy_T)]) if noisy_T in temperatures[P] else math.nan
             for P in Ps}
    out = {"T_c": tc, "plateau": plateau, "noisy": noisy}
    for name, values in list(out.items()):
        x = [P for P in Ps if math.isfinite(values[P]) and values[P] > 0]
        out[f"{name}_exponent"] = (fit_power_law(x, [values[P] for P in x]).exponent
                                   if len(x) >= MIN_FIT_POINTS else math.nan)
    return out


def tc_uncertainty(frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> TcUncertainty | None:
    """T_c(P) with seed-bootstrap 68% intervals and the exponents of T_c, the plateau and the noisy regime (module
    docstring), at the frame's one alpha; None with fewer than 2 P."""
    tables = seed_curves(frame)
    if len(tables) < 2:
        return None
    temperatures = {P: t.columns.to_numpy(dtype=float) for P, t in tables.items()}
    shared = set.intersection(*(set(t[np.isfinite(tables[P].mean(axis=0).to_numpy())])
                                for P, t in temperatures.items()))
    noisy_T = max(shared) if shared else math.nan
    point = _quantities({P: t.mean(axis=0).to_numpy() for P, t in tables.items()}, temperatures, noisy_T)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        curves = {}
        for P, t in tables.items():
            values = t.to_numpy(dtype=float)
            picked = values[rng.integers(0, len(values), len(values))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a T that no drawn seed has: NaN, left out
                curves[P] = np.nanmean(picked, axis=0)
        draws.append(_quantities(curves, temperatures, noisy_T))

    def interval(values: list[float]) -> tuple[float, float, int]:
        finite = np.array([v for v in values if math.isfinite(v)])
        if len(finite) < 2:
            return math.nan, math.nan, len(finite)
        low, high = np.percentile(finite, PERCENTILES)
        return float(low), float(high), len(finite)

    rows = []
    for P, t in tables.items():
        low, high, _ = interval([d["T_c"][P] for d in draws])
        rows.append({"P": P, "T_c": point["T_c"][P], "T_c_low": low, "T_c_high": high,
                     "plateau": point["plateau"][P], "noisy": point["noisy"][P], "n_seeds": len(t)})
    exponents = []
    for name in ("T_c", "plateau", "noisy"):
        low, high, defined = interval([d[f"{name}_exponent"] for d in draws])
        n_P = sum(1 for P in tables if math.isfinite(point[name][P]) and point[name][P] > 0)
        exponents.append({"quantity": name, "exponent": point[f"{name}_exponent"], "low": low, "high": high,
                          "n_P": n_P, "defined": defined})
    return TcUncertainty(pd.DataFrame(rows), pd.DataFrame(exponents), noisy_T)
