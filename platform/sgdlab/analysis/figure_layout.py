"""The panel, legend and axes of a curvature figure.

A legend of up to INSIDE_LEGEND entries is drawn inside the axes; a longer one goes to their right, on a
figure LEGEND_WIDTH inches wider. Batch sizes lie on a log2 axis ticked at the values drawn; a value axis is
logarithmic when its positive values span at least a given number of decades.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes

from sgdlab.analysis import plots

INSIDE_LEGEND = 5  # legend entries drawn inside the axes; more go to the right of them
LEGEND_WIDTH = 1.8  # inches added for a legend outside


def log_if_wide(values, decades: float = 1.0) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "log" if len(v) and v.min() > 0 and v.max() / v.min() >= 10 ** decades else "linear"


def legend_outside(n_entries: int) -> bool:
    return n_entries > INSIDE_LEGEND


def one_panel(n_entries: int):
    """One panel, widened for a legend outside the axes when it has more than INSIDE_LEGEND entries."""
    return plots.new_figure(extra_width=LEGEND_WIDTH if legend_outside(n_entries) else 0.0)


def place_legend(ax: Axes, n_entries: int, handles: list | None = None) -> None:
    kwargs = {"handles": handles} if handles else {}
    if legend_outside(n_entries):
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kwargs)
    elif n_entries:
        ax.legend(**kwargs)


def batch_axis(ax: Axes, values, label: str = "batch size B") -> None:
    values = sorted({float(v) for v in values if np.isfinite(v) and v > 0})
    ax.set_xscale("log", base=2)
    if values:
        plots.grid_ticks(ax.xaxis, values, 2)
    ax.set_xlabel(label)
