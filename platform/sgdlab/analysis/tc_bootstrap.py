"""T_c(P) as Sclocchi, Geiger & Wyart (2023) define it, the laws behind it, and seed-bootstrap 68% intervals.

Input: the trials of one alpha that fitted their data (finished, not diverged, not stopped at max_steps); per P a
table seed x T of the relative weight change w = ||w - w0|| / ||w0||, the test error and t* = sum of lr over steps.
- Kernel-escape T_c(P; c): where the seed-mean w first rises above c (fits.crossing_temperature), for each fixed
  threshold c in TcCriteria.thresholds; c does not depend on P.
- Performance T_c(P): where the seed-paired test error change, the mean over seeds of err(T) - err(T_min), first
  exceeds TcCriteria.error_change x the seed-mean err(T_min) in absolute value (fits.departure_temperature); and
  the same for each direction alone: where the error first rises (noise hurts) and first falls (noise helps) by
  that much, since a net can do both at different T.
- The plateau-relative crossing (fits.plateau_crossing): a labelled diagnostic, not a T_c.
- a, from T_c ~ P^-a fitted over the P that have a T_c, for each definition.
- The noisy regime: the (P, T) where the seed-mean w >= min(thresholds), the part of the curves every kernel-escape
  T_c is read from. There the weight change noise adds to the plateau, w(T) - w(T_min), grows as T^delta P^gamma
  (one product-law fit over all its points; delta also per P alone) and t* ~ T^tau P^b (the paper: tau = 1). Where
  that excess dominates, c = T_c^delta P^gamma gives T_c ~ P^-(gamma/delta): gamma / delta is the consistency check
  of the fitted a (and a - gamma / delta, per replicate, its interval).

A bootstrap replicate resamples, at each P independently, the seeds with replacement (a seed's curves over T go
whole, so its test errors stay paired) and recomputes everything; the 68% interval is the 15.9th to 84.1st
percentile over the N_BOOT replicates in which the quantity is defined. Point values use all seeds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sgdlab.analysis.fits import (MIN_FIT_POINTS, crossing_temperature, departure_temperature, fit_power_law,
                                  fit_product_law, plateau_crossing)

N_BOOT = 1000
PERCENTILES = (15.9, 84.1)
METRICS = ("weight_change", "test_error", "train_time")
PERFORMANCE = "performance"
DIRECTIONS = {"performance_rise": 1, "performance_fall": -1}  # one direction of the test-error change
PLATEAU = "plateau_diagnostic"
EXPONENTS = {"delta": "delta: w - w(T_min) ~ T^delta P^gamma", "gamma": "gamma: w - w(T_min) ~ T^delta P^gamma",
             "gamma_over_delta": "gamma / delta (predicts a)", "tau": "tau: t* ~ T^tau P^b (the paper: 1)",
             "b": "b: t* ~ T^tau P^b"}


@dataclass(frozen=True)
class TcCriteria:
    """Fixed weight-change thresholds c of the kernel-escape T_c, and the relative test-error change of the
    performance T_c (report.tc_thresholds, report.tc_error_change)."""
    thresholds: tuple[float, ...] = (0.02, 0.05, 0.1)
    error_change: float = 0.1

    def definitions(self, with_performance: bool = True) -> list[str]:
        """The T_c definitions in report order: one per threshold, the performance one, the diagnostic."""
        performance = [PERFORMANCE, *DIRECTIONS] if with_performance else []
        return [escape(c) for c in self.thresholds] + performance + [PLATEAU]


def escape(threshold: float) -> str:
    """The key of the kernel-escape T_c at one threshold: 'escape_0.05'."""
    return f"escape_{threshold:g}"


def definition_label(definition: str) -> str:
    """Readable name of a T_c definition key."""
    if definition == PERFORMANCE:
        return "test error departs (performance)"
    if definition in DIRECTIONS:
        return f"test error {'rises' if DIRECTIONS[definition] > 0 else 'falls'} (performance, one direction)"
    if definition == PLATEAU:
        return "2 x plateau (diagnostic, not T_c)"
    return f"w = {definition.removeprefix('escape_')} (kernel escape)"


@dataclass(frozen=True)
class SeedTables:
    """One P: the temperatures (ascending) and, per metric, a seeds x T array (NaN where a seed has no usable
    trial)."""
    T: np.ndarray
    values: dict[str, np.ndarray]


@dataclass
class TcResult:
    temperatures: pd.DataFrame  # definition, P, T_c, low, high
    delta_per_P: pd.DataFrame  # P, delta, low, high (w ~ T^delta over this P's noisy-regime points)
    exponents: pd.DataFrame  # quantity (a_DEFINITION | an EXPONENTS key | a_minus_prediction_DEFINITION), value,
    #                           low, high, defined
    seeds: dict[float, int]  # P -> seeds with a usable trial
    small_T_error: dict[float, float]  # P -> seed-mean test error at the smallest T (empty without test errors)
    error_change: pd.DataFrame  # P, T, error_change: the seed-paired relative test-error change (all seeds)


def seed_tables(frame: pd.DataFrame) -> dict[float, SeedTables]:
    """{P: SeedTables} of the trials that fitted their data (finished, neither diverged nor stopped at
    max_steps)."""
    usable = frame[(frame["status"] == "finished") & ~frame["outcome"].isin(["diverged", "max_steps"])]
    metrics = [m for m in METRICS if m in usable and pd.to_numeric(usable[m], errors="coerce").notna().any()]
    out = {}
    for P, part in usable.groupby("P", sort=True):
        T = np.sort(part["T"].unique().astype(float))
        values = {m: part.pivot_table(index="seed", columns="T", values=m, aggfunc="mean")
                  .reindex(columns=T).to_numpy(dtype=float) for m in metrics}
        out[float(P)] = SeedTables(T, values)
    return out


def _mean(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a T that no drawn seed has: NaN, left out later
        return np.nanmean(values, axis=0)


def relative_error_change(table: SeedTables) -> np.ndarray:
    """Per T: the mean over seeds of err(T) - err(T_min), over the seed-mean err(T_min) (the seed-paired relative
    test-error change the performance T_c thresholds)."""
    errors = table.values["test_error"]
    return _mean(errors - errors[:, :1]) / _mean(errors[:, :1])[0]


def _exponent(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return fit_power_law(x[keep], y[keep]).exponent if len(np.unique(x[keep])) >= MIN_FIT_POINTS else math.nan


def _estimate(tables: dict[float, SeedTables], criteria: TcCriteria) -> dict[tuple, float]:
    """Every quantity of the module docstring from one set of seed tables, keyed ('T_c', definition, P),
    ('delta', P), ('a', definition) and (exponent name,)."""
    out: dict[tuple, float] = {}
    noisy = []  # (T, P, w, t*) of the noisy regime
    for P, table in tables.items():
        w = _mean(table.values["weight_change"])
        for c in criteria.thresholds:
            out[("T_c", escape(c), P)] = crossing_temperature(table.T, w, c)
        out[("T_c", PLATEAU, P)] = plateau_crossing(table.T, w)
        if "test_error" in table.values:
            change = relative_error_change(table)
            out[("T_c", PERFORMANCE, P)] = departure_temperature(table.T, change, criteria.error_change)
            for definition, direction in DIRECTIONS.items():
                out[("T_c", definition, P)] = departure_temperature(table.T, change, criteria.error_change,
                                                                    direction)
        inside = w >= min(criteria.thresholds)
        excess = w - w[0]  # the weight change SGD noise adds to the small-T plateau
        out[("delta", P)] = _exponent(table.T[inside], excess[inside])
        t_star = _mean(table.values["train_time"]) if "train_time" in table.values else np.full_like(w, np.nan)
        noisy += [(T, P, wi, ti) for T, wi, ti in zip(table.T[inside], excess[inside], t_star[inside])]
    for definition in {key[1] for key in out if key[0] == "T_c"}:
        Ps = [P for P in tables if math.isfinite(out.get(("T_c", definition, P), math.nan))]
        out[("a", definition)] = -_exponent(Ps, [out[("T_c", definition, P)] for P in Ps])
    T, P, w, t_star = (np.array(column, dtype=float) for column in zip(*noisy)) if noisy else [np.array([])] * 4
    for names, y in ((("delta", "gamma"), w), (("tau", "b"), t_star)):
        try:
            exponents = fit_product_law(T, P, y).exponents
        except ValueError:
            exponents = (math.nan, math.nan)
        out.update({(name,): value for name, value in zip(names, exponents)})
    out[("gamma_over_delta",)] = out[("gamma",)] / out[("delta",)] if out[("delta",)] else math.nan
    for c in criteria.thresholds:
        out[("a_minus_prediction", escape(c))] = out[("a", escape(c))] - out[("gamma_over_delta",)]
    return out


def tc_estimates(frame: pd.DataFrame, criteria: TcCriteria = TcCriteria(), n_boot: int = N_BOOT,
                 seed: int = 0) -> TcResult | None:
    """T_c(P) for each definition, delta per P and the exponents, each with its seed-bootstrap 68% interval, from
    the trials of one alpha; None with fewer than 2 P."""
    tables = seed_tables(frame)
    if len(tables) < 2 or any("weight_change" not in t.values for t in tables.values()):
        return None
    point = _estimate(tables, criteria)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        drawn = {}
        for P, table in tables.items():
            rows = rng.integers(0, len(table.values["weight_change"]), len(table.values["weight_change"]))
            drawn[P] = SeedTables(table.T, {m: v[rows] for m, v in table.values.items()})
        draws.append(_estimate(drawn, criteria))

    def row(key: tuple) -> dict:
        values = np.array([d.get(key, math.nan) for d in draws])
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, PERCENTILES) if len(finite) >= 2 else (math.nan, math.nan)
        return {"value": point.get(key, math.nan), "low": float(low), "high": float(high), "defined": len(finite)}

    definitions = criteria.definitions(with_performance=any("test_error" in t.values for t in tables.values()))
    temperatures = pd.DataFrame([{"definition": d, "P": P, **row(("T_c", d, P))}
                                 for d in definitions for P in tables]).rename(columns={"value": "T_c"})
    delta = pd.DataFrame([{"P": P, **row(("delta", P))} for P in tables]).rename(columns={"value": "delta"})
    exponents = pd.DataFrame([{"quantity": f"a_{d}", **row(("a", d))} for d in definitions]
                             + [{"quantity": name, **row((name,))} for name in EXPONENTS]
                             + [{"quantity": f"a_minus_prediction_{escape(c)}",
                                 **row(("a_minus_prediction", escape(c)))} for c in criteria.thresholds])
    seeds = {P: int(np.isfinite(t.values["weight_change"]).any(axis=1).sum()) for P, t in tables.items()}
    with_errors = {P: t for P, t in tables.items() if "test_error" in t.values}
    small_T_error = {P: float(_mean(t.values["test_error"][:, :1])[0]) for P, t in with_errors.items()}
    error_change = pd.DataFrame([{"P": P, "T": T, "error_change": change} for P, t in with_errors.items()
                                 for T, change in zip(t.T, relative_error_change(t))],
                                columns=["P", "T", "error_change"])
    return TcResult(temperatures, delta, exponents, seeds, small_T_error, error_change)
