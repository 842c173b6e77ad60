"""The report's T_c(P) section (Sclocchi, Geiger & Wyart 2023): the temperature where SGD noise takes the net out
of the kernel regime (its weight change reaches a fixed threshold) and where its test error changes, against P.

Drawn when T and P are swept (at least 2 P and MIN_T temperatures) and the runs hold the weight change; at the
largest alpha (the laziest), one part per value of the params that vary within the (P, alpha, T) cells (chi, B,
...). Trials stopped at max_steps did not fit their data and are left out (counted). The numbers come from
tc_bootstrap.tc_estimates: T_c per definition and P, delta per P, and the exponents a, delta, gamma, gamma / delta,
tau and b, each with its 68% seed-bootstrap interval. Figures per part: the weight change against T with the
thresholds, the seed-paired test-error change against T with its tolerance, T_c against P for every definition,
and the collapse of the weight change against T / T_c(P).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.fits import MIN_FIT_POINTS, fit_power_law
from sgdlab.analysis.frames import aggregate
from sgdlab.analysis.report_section import Files, Numbers, markdown_table, number_key, splits
from sgdlab.analysis.tc_bootstrap import (EXPONENTS, N_BOOT, TcCriteria, TcResult, definition_label, escape,
                                          tc_estimates)

MIN_T = 3  # temperatures a T_c curve needs


def _interval(low: float, high: float) -> str:
    return f"[{low:.3g}, {high:.3g}]" if np.isfinite(low) and np.isfinite(high) else "-"


def _value(value: float, low: float, high: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3g} {_interval(low, high)}"


def _tables(result: TcResult) -> list[str]:
    """Per P (seeds, small-T test error, delta), then one row per T_c definition (T_c at each P and a), then the
    exponents of the noisy regime."""
    Ps = list(result.seeds)
    delta = result.delta_per_P.set_index("P")
    lines = ["", *markdown_table(["P", *map(plots.number, Ps)], [
        ["seeds", *(str(result.seeds[P]) for P in Ps)],
        ["test error at the smallest T", *(f"{result.small_T_error.get(P, math.nan):.3g}" for P in Ps)],
        ["delta (w - w(T_min) ~ T^delta at this P)", *(_value(*delta.loc[P, ["delta", "low", "high"]]) for P in Ps)]])]
    by = result.temperatures.set_index(["definition", "P"])
    exponents = result.exponents.set_index("quantity")
    rows = [[definition_label(d), *(_value(*by.loc[(d, P), ["T_c", "low", "high"]]) for P in Ps),
             _value(*exponents.loc[f"a_{d}", ["value", "low", "high"]])]
            for d in dict.fromkeys(result.temperatures["definition"])]
    lines += ["", *markdown_table(["T_c [68% interval]", *(f"P = {plots.number(P)}" for P in Ps),
                                   "a (T_c ~ P^-a)"], rows)]
    lines += ["", *markdown_table(["noisy regime", "exponent [68% interval]"],
                                  [[label, _value(*exponents.loc[name, ["value", "low", "high"]])]
                                   for name, label in EXPONENTS.items()])]
    return lines


def _figures(part: pd.DataFrame, result: TcResult, criteria: TcCriteria, out_dir: Path, suffix: str,
             title: str) -> Files:
    curves = aggregate(part, by=["P", "T"], metrics=["weight_change"])
    levels = {f"c = {c:g}": c for c in criteria.thresholds}
    figures = [(plots.lines_plot(curves, "T", "weight_change_mean", out_dir / f"weight_change_vs_T{suffix}.png",
                                 group="P", yerr="weight_change_se", ylabel=plots.label("weight_change"),
                                 title=title, levels=levels),
                "weight change against T, one line per P, with the kernel-escape thresholds c")]
    if len(result.error_change):
        tolerance = criteria.error_change
        path = plots.lines_plot(result.error_change, "T", "error_change", out_dir / f"error_change_vs_T{suffix}.png", group="P",
                                logy=False, title=title, levels={f"+{tolerance:g}": tolerance,
                                                                 f"-{tolerance:g}": -tolerance})
        figures.append((path, "seed-paired relative test error change against T, with the performance tolerance"))
    series = []
    for definition, rows in result.temperatures.groupby("definition", sort=False):
        found = rows[np.isfinite(rows["T_c"])]
        if found.empty:
            continue
        fit = fit_power_law(found["P"], found["T_c"]) if found["P"].nunique() >= MIN_FIT_POINTS else None
        bars = (found["T_c"] - found["low"], found["high"] - found["T_c"])
        series.append((definition_label(definition), found["P"], found["T_c"], bars, fit))
    if series:
        path = plots.power_laws_plot(series, out_dir / f"tc_vs_P{suffix}.png", xlabel=plots.label("P"),
                                     ylabel=plots.label("T_c"), title=title + "\n(bars: 68% seed bootstrap)")
        figures.append((path, "T_c against P for every definition, with power-law fits"))
    middle = escape(criteria.thresholds[len(criteria.thresholds) // 2])
    scale = result.temperatures[result.temperatures["definition"] == middle].set_index("P")["T_c"]
    collapsed = curves[curves["P"].map(scale).notna()].assign(T_over_T_c=lambda c: c["T"] / c["P"].map(scale))
    if collapsed["P"].nunique() >= 2:
        path = plots.lines_plot(collapsed, "T_over_T_c", "weight_change_mean", out_dir / f"collapse{suffix}.png",
                                group="P", ylabel=plots.label("weight_change"),
                                title=f"{title}\nT_c: {definition_label(middle)}")
        figures.append((path, f"weight change against T / T_c(P) ({definition_label(middle)}): the curves "
                              "collapse if T_c is the only P-dependent temperature"))
    return figures


def tc_section(frame: pd.DataFrame, swept: list[str], out_dir: Path, numbers: Numbers,
               criteria: TcCriteria = TcCriteria()) -> tuple[list[str], Files]:
    n_P, n_T = frame["P"].nunique(), frame["T"].nunique()
    if not ({"T", "P"} <= set(swept) and n_P >= 2 and n_T >= MIN_T and "weight_change" in frame):
        return [f"- T_c(P): not computed (needs T and P swept, at least 2 values of P and {MIN_T} of T, and the "
                f"weight change; here {n_P} P and {n_T} T)."], []
    lines, figures = [], []
    for suffix, where, part in splits(frame, ["P", "alpha", "T"], swept):
        alpha = part["alpha"].max()
        part = part[part["alpha"] == alpha]
        title = f"alpha = {plots.number(alpha)}" + (f", {where}" if where else "")
        capped = int((part["outcome"] == "max_steps").sum())
        result = tc_estimates(part, criteria)
        if result is None:
            lines.append(f"- T_c(P) at {title}: not computed (fewer than 2 P with trials that fitted their data).")
            continue
        lines += ["", f"### T_c(P) at {title}", "",
                  "Kernel-escape T_c: the first T where the seed-mean ||w - w0|| / ||w0|| rises above a fixed "
                  f"threshold c ({', '.join(f'{c:g}' for c in criteria.thresholds)}), log-interpolated. Performance "
                  "T_c: the first T where the seed-paired test error change (mean over seeds of err(T) - "
                  f"err(T_min)) exceeds {criteria.error_change:g} x the test error at T_min in absolute value, or in "
                  "one direction. The plateau crossing "
                  "(2 x the mean weight change at the 2 smallest T) is a diagnostic: the plateau grows with P. "
                  f"Intervals: 68%, {N_BOOT} seed-bootstrap replicates. Noisy regime: the (P, T) with seed-mean "
                  f"weight change >= {min(criteria.thresholds):g}; there the excess over the smallest T, w - w(T_min), "
                  "grows as T^delta P^gamma and t* ~ T^tau P^b, so the kernel-escape T_c ~ P^-a with a = gamma / "
                  "delta where the excess dominates."
                  + (f" {capped} trials stopped at max_steps are left out." if capped else ""),
                  *_tables(result)]
        exponents = result.exponents.set_index("quantity")
        differences = [f"{c:g}: {_value(*exponents.loc[f'a_minus_prediction_{escape(c)}', ['value', 'low', 'high']])}"
                       for c in criteria.thresholds]
        lines += ["", "- Consistency, a - gamma / delta (68% interval of the difference) at c = "
                  + "; ".join(differences) + "."]
        for r in result.temperatures.itertuples():
            numbers[number_key("T_c", where, r.definition, f"P {plots.number(r.P)}")] = r.T_c
        for r in result.exponents.itertuples():
            numbers.update({number_key(r.quantity, where): r.value, number_key(f"{r.quantity}_low", where): r.low,
                            number_key(f"{r.quantity}_high", where): r.high})
        figures += _figures(part, result, criteria, out_dir, suffix, title)
    return lines, figures
