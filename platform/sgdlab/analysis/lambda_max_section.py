"""End-of-training lambda_max against the batch size B.

Needs >= 2 batch sizes with an end-of-training lambda_max: the probe's `sharpness`, else the last point of the
run's sharpness trajectory. lambda_max_vs_B.png: seed mean ± s.e. per line against B; dotted, 2/lr of each line
with one lr. lambda_max_vs_B.csv.
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


def sharpness_vs_batch(frame: pd.DataFrame, probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    table = frame[frame["status"] == "finished"].copy()
    if table.empty:
        return [], [], []
    table["lambda_max"] = pd.to_numeric(table["sharpness"], errors="coerce") if "sharpness" in table else np.nan
    table["source"] = np.where(np.isfinite(table["lambda_max"]), "trajectory", "")
    if len(probes) and "sharpness" in probes:
        measured = probes.set_index("trial_id")["sharpness"].astype(float)
        from_probe = table["trial_id"].map(measured)
        use = np.isfinite(from_probe.astype(float))
        table.loc[use, "lambda_max"] = from_probe[use]
        table.loc[use, "source"] = "probe"
    table = table[np.isfinite(table["lambda_max"]) & (table["B"] > 0)]
    if table["B"].nunique() < 2:
        return [], [], []
    keys = line_keys(table, ["B"])
    cells = aggregate(table, by=["B", *keys], metrics=["lambda_max"])
    cells = cells[cells["lambda_max_n"] > 0]
    with plots.styled():
        fig, (ax,) = one_panel(len(line_parts(cells, keys)))
        n_lines = 0
        for i, (name, part) in enumerate(line_parts(cells, keys)):
            part = part.sort_values("B")
            ax.errorbar(part["B"], part["lambda_max_mean"], yerr=part["lambda_max_se"].fillna(0), fmt="o-",
                        color=f"C{i % 10}", label=name or "lambda_max")
            lr = _one_lr(table, keys, part)
            if lr:
                ax.axhline(2 / lr, color=f"C{i % 10}", ls=":", lw=1)
            n_lines += 1
        ax.set_yscale(log_if_wide(cells["lambda_max_mean"]))
        batch_axis(ax, cells["B"])
        ax.set(ylabel=plots.label("lambda_max"), title="end-of-training lambda_max (dotted: 2/lr)")
        place_legend(ax, n_lines)
        path = plots.save(fig, out_dir / "lambda_max_vs_B.png")
    csv = out_dir / "lambda_max_vs_B.csv"
    cells.to_csv(csv, index=False)
    counts = table.loc[table["outcome"] != "diverged", "source"].value_counts()
    lines = ["", f"End-of-training lambda_max against B ({counts.get('probe', 0)} trials from their probe, "
                 f"{counts.get('trajectory', 0)} from the last point of their sharpness trajectory; diverged trials "
                 "left out; seed mean ± s.e.):",
             ""]
    rows = [[plots.number(r["B"]), *(plots.number(r[k]) for k in keys),
             plus_minus(r["lambda_max_mean"], r["lambda_max_se"]), str(int(r["lambda_max_n"]))]
            for _, r in cells.iterrows()]
    lines += markdown_table(["B", *keys, "lambda_max", "n"], rows)
    return lines, [(path, "end-of-training lambda_max against B, mean ± s.e. over seeds, 2/lr dotted")], [
        (csv, "end-of-training lambda_max per B (and swept value), over seeds")]


def _one_lr(table: pd.DataFrame, keys: list[str], cells: pd.DataFrame) -> float | None:
    """The lr of a line when all its trials share one (lr is a key, or fixed across the sweep)."""
    if "lr" in keys:
        return float(cells["lr"].iloc[0])
    lrs = table["lr"].dropna().unique() if "lr" in table else []
    return float(lrs[0]) if len(lrs) == 1 and lrs[0] > 0 else None
