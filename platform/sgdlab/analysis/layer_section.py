"""Per-layer Hessian sensitivity: HAWQ's top eigenvalue and HAWQ-V2's trace of each layer's block.

Needs probes with layer_trace/<param> or layer_lambda_max/<param>. layer_sensitivity.png: the layers ranked by
trace (sensitivity.layer_sensitivity), trace with its standard error and lambda_max. layers.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import log_if_wide
from sgdlab.analysis.probes import layer_table
from sgdlab.analysis.report_section import Files, markdown_table, plus_minus
from sgdlab.analysis.sensitivity import layer_sensitivity


def layer_sensitivities(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    layers = layer_table(probes) if len(probes) else pd.DataFrame()
    if layers.empty:
        return [], [], []
    table = layer_sensitivity(layers)
    if table.empty:
        return [], [], []
    order = table.iloc[::-1]  # most sensitive on top
    y = np.arange(len(order))
    with plots.styled():
        fig, axes = plots.new_grid(1, 2, sharey=True, extra_width=1.0, panel_height=max(2.4, 0.6 + 0.28 * len(order)))
        ax, bx = axes[0]
        ax.barh(y, order["trace"].fillna(0), xerr=order["trace_se"].fillna(0), color="C0", capsize=2)
        ax.set_yticks(y, order["layer"])
        ax.set(xlabel="trace of the layer's Hessian block", title="HAWQ-V2: trace (± s.e.)")
        bx.barh(y, order["lambda_max"].fillna(0), color="C1")
        bx.set(xlabel="top eigenvalue of the block", title="HAWQ: lambda_max")
        for axis, column in ((ax, "trace"), (bx, "lambda_max")):
            axis.set_xscale(log_if_wide(order[column], 2))
        fig.suptitle(f"Per-layer sensitivity, ranked by trace ({int(table['n'].max())} probed trials pooled)")
        path = plots.save(fig, out_dir / "layer_sensitivity.png")
    csv = out_dir / "layers.csv"
    table.to_csv(csv, index=False)
    lines = ["", "Per-layer Hessian sensitivity (HAWQ top eigenvalue, HAWQ-V2 trace) pooled over the probed trials, "
                 "ranked by trace (s.e.: over trials, or the Hutchinson s.e. of a single trial):", ""]
    rows = [[str(r["rank"]), r["layer"], plus_minus(r["trace"], r["trace_se"]), plus_minus(r["lambda_max"], np.nan),
             str(r["n"])] for _, r in table.iterrows()]
    lines += markdown_table(["rank", "layer", "trace", "lambda_max", "trials"], rows)
    return lines, [(path, "per-layer trace (± s.e.) and top eigenvalue, layers ranked by trace")], [
        (csv, "per-layer trace, standard error and top eigenvalue, ranked")]
