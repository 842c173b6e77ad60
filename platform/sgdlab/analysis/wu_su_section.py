"""Wu & Su linear stability of SGD at the end of training.

q = lr ((1 - p) lambda_max + p trace(H)), p = (N - B) / (B (N - 1)), with N = P (stability.wu_su); SGD is
linearly stable when q <= 2. Needs probes of SGD runs with sharpness and hessian_trace. wu_su.png: q against B
(or lr when B is fixed), and the bound 2. wu_su.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import batch_axis, log_if_wide, one_panel, place_legend
from sgdlab.analysis.figure_lines import line_keys, line_parts
from sgdlab.analysis.frames import aggregate
from sgdlab.analysis.report_section import Files, markdown_table, plus_minus
from sgdlab.analysis.stability import WU_SU_BOUND, wu_su


def with_wu_su(probes: pd.DataFrame) -> pd.DataFrame:
    """The probe frame with a column wu_su for SGD trials with sharpness and hessian_trace (N = P); NaN else."""
    needed = {"sharpness", "hessian_trace", "lr", "B", "P", "optimizer"}
    out = probes.copy()
    if not needed <= set(out.columns) or out.empty:
        return out
    sgd = out["optimizer"].astype(str).str.lower() == "sgd"
    value = wu_su(out["lr"], out["sharpness"], out["hessian_trace"], out["B"], out["P"])
    out["wu_su"] = np.where(sgd, value, np.nan)
    return out


def wu_su_check(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    if "wu_su" not in probes:
        return [], [], []
    table = probes[np.isfinite(probes["wu_su"].astype(float))]
    if table.empty:
        return [], [], []
    x = "B" if table["B"].nunique() >= 2 or table["lr"].nunique() < 2 else "lr"
    keys = line_keys(table, [x])
    cells = aggregate(table, by=[x, *keys], metrics=["wu_su"])
    cells = cells[cells["wu_su_n"] > 0]
    ok = table[table["outcome"] != "diverged"]
    with plots.styled():
        fig, (ax,) = one_panel(len(line_parts(cells, keys)) + 2)
        for i, (name, part) in enumerate(line_parts(cells, keys)):
            part = part.sort_values(x)
            ax.errorbar(part[x], part["wu_su_mean"], yerr=part["wu_su_se"].fillna(0), fmt="o-", color=f"C{i % 10}",
                        label=name or "SGD trials")
        ax.axhline(WU_SU_BOUND, color="black", ls="--", lw=1, label="bound 2")
        ax.axhspan(WU_SU_BOUND, max(WU_SU_BOUND * 1.5, float(np.nanmax(cells["wu_su_mean"])) * 1.2), color="red",
                   alpha=0.07, lw=0, label="linearly unstable")
        if x == "B":
            batch_axis(ax, cells["B"])
        else:
            ax.set(xscale="log", xlabel=plots.label("lr"))
            plots.grid_ticks(ax.xaxis, cells["lr"].unique(), 10)
        ax.set(yscale=log_if_wide([*cells["wu_su_mean"], WU_SU_BOUND], 1.5),
               ylabel="lr ((1-p) lambda_max + p tr H)", title="Wu & Su: SGD linearly stable below 2")
        place_legend(ax, len(line_parts(cells, keys)) + 2)
        path = plots.save(fig, out_dir / "wu_su.png")
    csv = out_dir / "wu_su.csv"
    cells.to_csv(csv, index=False)
    under = int((ok["wu_su"] <= WU_SU_BOUND).sum())
    subset = ""
    if "N_probe" in table and (table["N_probe"].astype(float) < table["P"].astype(float)).any():
        subset = " (lambda_max and trace are of the Hessian over the probe data, fewer points than P)"
    lines = ["", f"Wu & Su linear stability of SGD at the end of training: q = lr ((1 - p) lambda_max + p trace(H)), "
                 f"p = (N - B) / (B (N - 1)), N = P{subset}; linearly stable when q <= 2.", "",
             f"- {under} of the {len(ok)} probed SGD trials (diverged ones left out) are under 2; q ranges "
             f"{ok['wu_su'].min():.3g} to {ok['wu_su'].max():.3g}." if len(ok) else
             "- every probed SGD trial diverged.", ""]
    rows = [[plots.number(r[x]), *(plots.number(r[k]) for k in keys), plus_minus(r["wu_su_mean"], r["wu_su_se"]),
             str(int(r["wu_su_n"]))] for _, r in cells.iterrows()]
    lines += markdown_table([x, *keys, "q", "n"], rows)
    return lines, [(path, "Wu & Su stability quantity of SGD trials against the bound 2")], [
        (csv, "Wu & Su quantity per swept point, over seeds")]
