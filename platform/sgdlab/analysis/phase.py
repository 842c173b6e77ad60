"""Phase diagrams: a metric over the (alpha, T) plane, one panel per training-set size P, in one figure.

A cell is one (alpha, T) grid point at one P. Its colour is the metric's seed mean over the finished,
non-diverged trials (frames.aggregate). Marks:
  grey, hatched 'xx'   diverged: every finished trial of the cell diverged;
  red 'x'              some, not all, seeds diverged (the colour is the mean of the others);
  white, dotted        no result: the cell's trials failed or are unfinished, or none was run (missing);
  white triangle       some seed stopped at train.max_steps without fitting its data (the colour includes it:
                       its numbers are those of an unfinished fit, and fits over the cells leave it out).
alpha runs on a log2 axis, T on a log10 axis; cells end at the geometric midpoints between grid values. The
panels share one colour scale, set by the cells whose trials all fitted their data (a capped cell outside it
takes the end colour, and the colour bar is extended): logarithmic when those values are positive and span at
least two decades (weight change, training time), else linear (test error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from sgdlab.analysis import plots
from sgdlab.analysis.frames import aggregate

CMAP = "viridis"
DIVERGED = {"facecolor": "0.78", "edgecolor": "0.3", "hatch": "xx", "linewidth": 0}
NO_RESULT = {"facecolor": "white", "edgecolor": "0.55", "hatch": "..", "linewidth": 0}
PARTIAL = {"marker": "x", "color": "crimson", "markersize": 6, "markeredgewidth": 1.5, "linestyle": ""}
CAPPED = {"marker": "^", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 6, "linestyle": ""}
LOG_SCALE_DECADES = 2


def cell_edges(values) -> np.ndarray:
    """Boundaries of the cells of sorted positive grid values: geometric midpoints, the end cells mirrored
    (a single value x gets the cell x/2 .. 2x)."""
    logs = np.log(np.sort(np.asarray(values, dtype=float)))
    if len(logs) == 1:
        return np.exp(logs[0] + np.log(2) * np.array([-1.0, 1.0]))
    mids = (logs[1:] + logs[:-1]) / 2
    return np.exp(np.concatenate([[2 * logs[0] - mids[0]], mids, [2 * logs[-1] - mids[-1]]]))


def color_norm(values) -> Normalize:
    """LogNorm when all finite values are positive and span LOG_SCALE_DECADES decades, else linear."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Normalize(0, 1)
    lo, hi = v.min(), v.max()
    if lo > 0 and hi / lo >= 10 ** LOG_SCALE_DECADES:
        return LogNorm(lo, hi)
    return Normalize(lo, hi if hi > lo else lo + 1)


def cell_states(cells: pd.DataFrame, metric: str) -> pd.Series:
    """'ok', 'partial' (some seeds diverged), 'diverged' (all finished diverged) or 'none' for aggregated cells."""
    value = np.isfinite(cells[f"{metric}_mean"])
    all_diverged = (cells["n_finished"] > 0) & (cells["n_diverged"] == cells["n_finished"])
    state = np.where(all_diverged, "diverged",
                     np.where(~value, "none", np.where(cells["n_diverged"] > 0, "partial", "ok")))
    return pd.Series(state, index=cells.index)


def phase_diagram(frame: pd.DataFrame, path: Path, metric: str = "test_error", title: str = "") -> Path:
    """Draw `metric` of a trial frame over (alpha, T), one panel per P, to the PNG `path`.

    Every P panel spans the union of the alpha and T values of the frame; a grid point absent at some P is
    marked missing there. Trials without a positive alpha and T cannot be placed and are left out.
    """
    placed = frame[(frame["alpha"] > 0) & (frame["T"] > 0)]
    cells = aggregate(placed, by=["P", "alpha", "T"], metrics=[metric])
    capped = set(placed.loc[placed["outcome"] == "max_steps", ["P", "T", "alpha"]].itertuples(index=False, name=None))
    alphas, temps = np.sort(cells["alpha"].unique()), np.sort(cells["T"].unique())
    x_edges, y_edges = cell_edges(alphas), cell_edges(temps)
    fitted = [(P, T, a) not in capped for P, T, a in cells[["P", "T", "alpha"]].itertuples(index=False, name=None)]
    norm = color_norm(cells.loc[fitted, f"{metric}_mean"] if any(fitted) else cells[f"{metric}_mean"])
    values = cells[f"{metric}_mean"].to_numpy(dtype=float)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(np.nanmin(values, initial=np.inf) < norm.vmin), bool(np.nanmax(values, initial=-np.inf) > norm.vmax))]
    full = pd.MultiIndex.from_product([temps, alphas], names=["T", "alpha"])
    seen = set()
    with plots.styled():
        panels = sorted(cells["P"].unique())
        fig, axes = plots.new_figure(ncols=len(panels), sharey=True, extra_width=1.2)
        for ax, P in zip(axes, panels):
            here = cells[cells["P"] == P].set_index(["T", "alpha"]).reindex(full)
            states = cell_states(here, metric)
            grid = here[f"{metric}_mean"].to_numpy().reshape(len(temps), len(alphas))
            ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(grid), cmap=CMAP, norm=norm)
            for k, ((T, alpha), state) in enumerate(states.items()):
                i, j = divmod(k, len(alphas))
                box = (x_edges[j], y_edges[i]), x_edges[j + 1] - x_edges[j], y_edges[i + 1] - y_edges[i]
                if state == "diverged":
                    ax.add_patch(Rectangle(*box, **DIVERGED))
                elif state == "none":
                    ax.add_patch(Rectangle(*box, **NO_RESULT))
                elif state == "partial":
                    ax.plot([alpha], [T], **PARTIAL)
                seen.add(state)
                if (P, T, alpha) in capped:
                    ax.plot([alpha], [T], **CAPPED)
                    seen.add("capped")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=10)
            ax.set_xlim(x_edges[0], x_edges[-1])
            ax.set_ylim(y_edges[0], y_edges[-1])
            plots.grid_ticks(ax.xaxis, alphas, 2)
            plots.grid_ticks(ax.yaxis, temps, 10)
            ax.set(title=f"P = {plots.number(P)}", xlabel=plots.label("alpha"))
        axes[0].set_ylabel(plots.label("T"))
        fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=axes, label=plots.label(metric), extend=extend)
        legend = {"diverged": Patch(**DIVERGED, label="diverged (all seeds)"),
                  "partial": Line2D([], [], **PARTIAL, label="some seeds diverged"),
                  "none": Patch(**NO_RESULT, label="no result (failed, unfinished or missing)"),
                  "capped": Line2D([], [], **CAPPED, label="stopped at max_steps (not fitted)")}
        handles = [h for state, h in legend.items() if state in seen]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2))
        if title:
            fig.suptitle(title)
        return plots.save(fig, path)
