"""Mini-batch against full-batch top eigenvalue: E[lambda_max(H_B)] / lambda_max(H).

Needs probes with batch_lambda_max_ratio/B<b>. batch_ratio.png: the ratio against the probe batch size, the fit
1 + c (1/B - 1/N) (spectra.fit_batch_ratio) and the value 1. More than MAX_LINES trained points are pooled into
one line. batch_ratio.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import batch_axis, one_panel, place_legend
from sgdlab.analysis.figure_lines import line_keys, line_parts
from sgdlab.analysis.probes import batch_table
from sgdlab.analysis.report_section import Files, markdown_table, plus_minus
from sgdlab.analysis.spectra import fit_batch_ratio

MAX_LINES = 8


def batch_ratio(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    long = batch_table(probes, "batch_lambda_max_ratio") if len(probes) else pd.DataFrame()
    if long.empty:
        return [], [], []
    long = long[long["outcome"] != "diverged"]
    if long.empty:
        return [], [], []
    keys = line_keys(long, [])
    if len(line_parts(long, keys)) > MAX_LINES:
        keys = []
    rows, cells, lines = [], [], ["", "E[lambda_max(H_B)] / lambda_max(H) at the trained points (mini-batches of B "
                                      "of the N probe examples; mean ± s.e. over runs) and the least-squares fit "
                                      "1 + c (1/B - 1/N):", ""]
    with plots.styled():
        fig, (ax,) = one_panel(len(line_parts(long, keys)) + 2)
        handles = []
        for i, (name, part) in enumerate(line_parts(long, keys)):
            g = part.groupby("b")["value"]
            agg = pd.DataFrame({"mean": g.mean(), "se": g.sem(), "n": g.count()})
            fit = fit_batch_ratio(part["b"], part["N_probe"], part["value"])
            N = float(np.nanmedian(part["N_probe"].astype(float)))
            colour = f"C{i % 10}"
            label = (name or "measured") + (f": c = {fit.c:.3g}" if fit else "")
            handles.append(ax.errorbar(agg.index, agg["mean"], yerr=agg["se"].fillna(0), fmt="o", color=colour,
                                       label=label))
            if fit is not None and np.isfinite(N):
                grid = np.geomspace(agg.index.min(), max(N, agg.index.max()), 60)
                ax.plot(grid, fit(grid, N), "--", color=colour)
            cells.append(agg.reset_index().assign(line=name, N=N, c=fit.c if fit else np.nan,
                                                  c_se=fit.stderr if fit else np.nan))
            rows.append([name or "all", ", ".join(f"B={plots.number(b)}: {plus_minus(m, s)}" for b, m, s in
                                                  zip(agg.index, agg["mean"], agg["se"])),
                         str(part["trial_id"].nunique()), plots.number(N),
                         fit.describe() if fit else "not fitted (no B < N)"])
        handles.append(Line2D([], [], ls="--", color="0.4", label="fit 1 + c (1/B - 1/N)"))
        handles.append(ax.axhline(1.0, color="black", ls=":", lw=1, label="1 (full batch)"))
        batch_axis(ax, long["b"], "probe batch size B")
        ax.set(ylabel="E[lambda_max(H_B)] / lambda_max(H)", title="mini-batch vs full top eigenvalue")
        place_legend(ax, len(handles), handles)
        path = plots.save(fig, out_dir / "batch_ratio.png")
    csv = out_dir / "batch_ratio.csv"
    pd.concat(cells, ignore_index=True).rename(columns={"b": "B_probe"}).to_csv(csv, index=False)
    lines += markdown_table(["trained point", "ratio by B", "runs", "N", "fit"], rows)
    return lines, [(path, "E[lambda_max(H_B)] / lambda_max(H) against the probe batch size, fit and 1")], [
        (csv, "mini-batch / full top-eigenvalue ratio per probe batch size, with the fitted c")]
