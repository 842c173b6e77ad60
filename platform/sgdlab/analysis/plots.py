"""Figure helpers shared by the analysis: one style, axis labels, grid-value ticks, PNG output, generic plots.

Figures use matplotlib's object API on the Agg canvas (no pyplot, no global figure state): the analysis runs
headless and leaves no figure open. PNGs are written at DPI = 120.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from sgdlab.analysis.fits import PowerLaw

DPI = 120
PANEL = (3.8, 3.2)  # inches per panel
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.frameon": False, "hatch.linewidth": 0.8,
         "lines.markersize": 4, "errorbar.capsize": 2}
LABELS = {"alpha": "alpha (init scale)", "T": "T = lr/(B*width)", "lr": "learning rate lr", "B": "batch size B",
          "P": "training points P", "seed": "seed", "test_error": "test error", "train_error": "train error",
          "weight_change": "||w - w0|| / ||w0||", "train_time": "training time t* = sum of lr", "steps": "steps",
          "sharpness": "sharpness lambda_max(H)", "T_c": "T_c (noise starts to matter)",
          "T_over_T_c": "T / T_c(P)", "error_change": "seed-paired test error change, relative",
          "lambda_max": "end-of-training lambda_max(H)", "lr_max": "largest stable lr",
          "optimizer": "optimizer", "train_loss": "train loss"}
MAX_TICK_LABELS = 8


def label(name: str) -> str:
    """Readable axis label of a column name (the name itself when there is none)."""
    return LABELS.get(name, name)


def number(value) -> str:
    """Short text of a grid value: 0.001, 1024, 3e-07, sgd."""
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)


@contextmanager
def styled():
    """Apply STYLE while a figure is built and saved."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(ncols: int = 1, sharey: bool = False, extra_width: float = 0.0) -> tuple[Figure, list[Axes]]:
    """A row of `ncols` panels on an Agg canvas, with constrained layout."""
    fig = Figure(figsize=(PANEL[0] * ncols + extra_width, PANEL[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0])


def new_grid(nrows: int, ncols: int, sharex: bool = False, sharey: bool = False, extra_width: float = 0.0,
             panel_height: float | None = None) -> tuple[Figure, np.ndarray]:
    """An nrows x ncols array of panels (each PANEL, or panel_height inches high) on an Agg canvas, with
    constrained layout."""
    height = PANEL[1] if panel_height is None else panel_height
    fig = Figure(figsize=(PANEL[0] * ncols + extra_width, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def tick_text(value: float, base: int) -> str:
    """'1', '$2^{10}$', '$10^{-3}$' for integer powers of `base`, else the number."""
    k = math.log(value, base)
    if abs(k - round(k)) > 1e-9:
        return number(value)
    return "1" if round(k) == 0 else f"${base}^{{{round(k)}}}$"


def grid_ticks(axis: Axis, values, base: int) -> None:
    """Major ticks at the grid values (at most MAX_TICK_LABELS labelled), no minor ticks."""
    values = sorted(values)
    every = math.ceil(len(values) / MAX_TICK_LABELS)
    axis.set_major_locator(FixedLocator(values))
    axis.set_major_formatter(FixedFormatter([tick_text(v, base) if i % every == 0 else ""
                                             for i, v in enumerate(values)]))
    axis.set_minor_locator(NullLocator())


def power_law_plot(x, y, fit: PowerLaw, path: Path, *, xlabel: str, ylabel: str, title: str = "",
                   yerr=None) -> Path:
    """Points y(x) (with error bars yerr: (below, above), if given) and the fitted power law on log-log axes, the
    exponent ± its error in the legend (power_laws_plot with one series)."""
    return power_laws_plot([("measured", x, y, yerr, fit)], path, xlabel=xlabel, ylabel=ylabel, title=title)


def power_laws_plot(series: list[tuple], path: Path, *, xlabel: str, ylabel: str, title: str = "") -> Path:
    """Several (label, x, y, yerr, fit) on log-log axes, one colour each: points y(x) with error bars yerr =
    (below, above) or None, and the fitted PowerLaw (or None) dashed, its exponent in the series' legend entry
    (the legend beside the axes when there are more than two series); x ticks at the measured x (labelled as powers
    of 2 where they are); y labels at the decades, also at minor ticks when y spans less than one."""
    outside = len(series) > 2
    with styled():
        fig, (ax,) = new_figure(extra_width=2.6 if outside else 0.0)
        xs, ys = [], []
        for i, (name, x, y, yerr, fit) in enumerate(series):
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            bars = None if yerr is None else [np.nan_to_num(np.asarray(e, dtype=float)) for e in yerr]
            ax.errorbar(x, y, yerr=bars, fmt="o", color=f"C{i}", capsize=3,
                        label=name + (f"; fit: {fit.exponent_text()}" if fit is not None else ""))
            if fit is not None:
                line = np.geomspace(np.nanmin(x), np.nanmax(x), 50)
                ax.plot(line, fit(line), "--", color=f"C{i}")
            xs, ys = [*xs, *x[np.isfinite(x)]], [*ys, *y[np.isfinite(y) & (y > 0)]]
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
        grid_ticks(ax.xaxis, sorted(set(xs)), 2)
        if ys and max(ys) >= 10 * min(ys):  # within one decade the minor ticks carry the only labels
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(**({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if outside else {}))
        return save(fig, path)


def lines_plot(table: pd.DataFrame, x: str, y: str, path: Path, *, group: str | None = None,
               yerr: str | None = None, fits: dict | None = None, logx: bool = True, logy: bool = True,
               ylabel: str | None = None, title: str = "", levels: dict[str, float] | None = None) -> Path:
    """Column y against column x, one line per value of `group`, error bars from column `yerr`.

    A PowerLaw in fits[group value] (fits[None] without groups) is drawn dashed, its exponent in the legend; each
    of `levels` ({label: y}) is a grey dotted horizontal line, labelled at its right end.
    """
    fits = fits or {}
    groups = table.groupby(group, sort=True) if group else [(None, table)]
    with styled():
        fig, (ax,) = new_figure()
        for i, (value, part) in enumerate(groups):
            part = part.sort_values(x)
            name = f"{group} = {number(value)}" if group else y
            ax.errorbar(part[x], part[y], yerr=part[yerr] if yerr else None, fmt="o-", color=f"C{i}", label=name)
            if value in fits:
                line = np.geomspace(part[x].min(), part[x].max(), 50)
                ax.plot(line, fits[value](line), "--", color=f"C{i}", label=f"fit: {fits[value].exponent_text()}")
        for text, value in (levels or {}).items():
            ax.axhline(value, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(text, (1, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", color="0.4",
                        fontsize=7)
        ax.set(xscale="log" if logx else "linear", yscale="log" if logy else "linear", xlabel=label(x),
               ylabel=ylabel or label(y), title=title)
        ax.legend()
        return save(fig, path)
