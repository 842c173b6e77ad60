"""Sharpness along training against the edge of stability 2/lr.

Needs train runs with a `sharpness` history. sharpness_trajectories.png: one panel per lr, the sharpness
against step of each run and the line 2/lr (above it the train loss, log scale, when logged); diverged runs
dotted; where the runs also logged the batch sharpness at their own B (probe.batch_sizes with probe.every), it
dashed in the same colour. trajectories.csv: per run, the final sharpness and eos_ratio (stability.eos_ratio),
and batch_eos_ratio, the same of the batch sharpness (the edge of stochastic stability: 1 at 2/lr).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import LEGEND_WIDTH, legend_outside, place_legend
from sgdlab.analysis.figure_lines import line_keys, line_parts
from sgdlab.analysis.report_section import Files, markdown_table, plus_minus
from sgdlab.analysis.stability import EOS_TAIL, eos_table, trajectory_frame


def sharpness_trajectories(frame: pd.DataFrame, histories: dict, out_dir: Path) -> tuple[list[str], Files, Files]:
    traj = trajectory_frame(frame, histories, "sharpness")
    traj = traj[np.isfinite(traj["lr"].astype(float)) & (traj["lr"].astype(float) > 0)] if len(traj) else traj
    if traj.empty:
        return [], [], []
    runs = eos_table(traj)
    batch = trajectory_frame(frame, histories, "batch_sharpness")
    if len(batch):
        batch_ratios = eos_table(batch)[["run_id", "eos_ratio"]].rename(columns={"eos_ratio": "batch_eos_ratio"})
        runs = runs.merge(batch_ratios, on="run_id", how="left")
    loss = trajectory_frame(frame, histories, "train_loss")
    keys = line_keys(runs, ["lr"])
    colour = {name: f"C{i % 10}" for i, (name, _) in enumerate(line_parts(runs, keys))}
    run_colour = {r: colour[name] for name, part in line_parts(runs, keys) for r in part["run_id"]}
    run_name = {r: name for name, part in line_parts(runs, keys) for r in part["run_id"]}
    lrs = sorted(runs["lr"].unique())
    ncols = min(len(lrs), 4)
    blocks = math.ceil(len(lrs) / ncols)
    rows = [kind for kind, frame_ in (("loss", loss), ("sharpness", traj), ("batch", batch)) if len(frame_)]
    with plots.styled():
        fig, axes = plots.new_grid(blocks * len(rows), ncols, sharex="col",
                                   extra_width=(LEGEND_WIDTH if legend_outside(len(colour) + 1) else 0.0)
                                   + (1.5 if ncols == 1 else 0.0))
        for ax in axes.flat:
            ax.set_visible(False)
        for i, lr in enumerate(lrs):
            row, col = divmod(i, ncols)
            panel = {kind: axes[row * len(rows) + j, col] for j, kind in enumerate(rows)}
            for ax in panel.values():
                ax.set_visible(True)
            panel[rows[0]].set_title(f"lr = {plots.number(lr)}")
            _curvature_panel(panel["sharpness"], traj[traj["lr"] == lr], run_colour, run_name, lr,
                             plots.label("sharpness"), legend=True)
            if "batch" in panel:
                _curvature_panel(panel["batch"], batch[batch["lr"] == lr], run_colour, run_name, lr,
                                 "batch sharpness at the run's B", legend=False)
            if "loss" in panel:
                _loss_panel(panel["loss"], loss[loss["lr"] == lr], run_colour)
            panel[rows[-1]].set_xlabel("step")
        fig.suptitle("Sharpness along training against 2/lr\n(dotted: diverged runs)")
        path = plots.save(fig, out_dir / "sharpness_trajectories.png")
    csv = out_dir / "trajectories.csv"
    runs.to_csv(csv, index=False)
    lines = ["", f"Sharpness along training ({len(runs)} runs with a sharpness history): eos_ratio = (lr/2) x the "
                 f"mean sharpness over the last {EOS_TAIL:.0%} of the recorded steps; 1 = at the edge of stability "
                 "2/lr, below 1 = flatter (seed mean ± s.e., diverged runs left out)"
                 + ("; batch eos_ratio: the same of the batch sharpness g_B^T H_B g_B / g_B^T g_B at the run's own B "
                    "(1: at the edge of stochastic stability)." if "batch_eos_ratio" in runs else "."), ""]
    rows = []
    ok = runs[runs["outcome"] != "diverged"]
    for values, part in ok.groupby(["lr", *keys], dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        r = part["eos_ratio"].astype(float)
        rows.append([*(plots.number(v) for v in values), str(len(part)),
                     plus_minus(part["final_sharpness"].mean(), part["final_sharpness"].sem()),
                     f"{2 / values[0]:.3g}", plus_minus(r.mean(), r.sem())])
        if "batch_eos_ratio" in part:
            b = part["batch_eos_ratio"].astype(float)
            rows[-1].append(plus_minus(b.mean(), b.sem()))
    lines += markdown_table(["lr", *keys, "runs", "final sharpness", "2/lr", "eos_ratio",
                             *(["batch eos_ratio"] if "batch_eos_ratio" in runs else [])], rows)
    return lines, [(path, "sharpness against step, one panel per lr, with 2/lr (edge of stability)")], [
        (csv, "per run with a sharpness history: final sharpness, 2/lr, eos_ratio")]


def _curvature_panel(ax, here: pd.DataFrame, run_colour: dict, run_name: dict, lr: float, ylabel: str,
                     legend: bool) -> None:
    """One curvature history per run (dotted if diverged) and the line 2/lr; the y range stops at 1.25 x the
    larger of 2/lr and the non-diverged runs' values."""
    threshold = 2 / lr
    ok = here[here["outcome"] != "diverged"]["value"]
    top = 1.25 * max(threshold, np.nanmax(ok) if len(ok) and np.isfinite(ok).any() else threshold)
    labelled = set()
    parts = dict(list(here.groupby("run_id", sort=False)))
    for run_id in (r for r in run_name if r in parts):  # in the order of the lines
        part, name = parts[run_id], run_name[run_id]
        diverged = part["outcome"].iloc[0] == "diverged"
        ax.plot(part["step"], part["value"], ":" if diverged else "-", color=run_colour[run_id], lw=1.2,
                marker=".", ms=3, label=name if name and name not in labelled else None)
        labelled.add(name)
    ax.axhline(threshold, color="black", ls="--", lw=1, label="2/lr")
    bottom = min(0.0, float(np.nanmin(here["value"]))) if np.isfinite(here["value"]).any() else 0.0
    ax.set_ylim(bottom, top)
    ax.set_ylabel(ylabel)
    if legend:
        if legend_outside(len(labelled) + 1):
            place_legend(ax, len(labelled) + 1)
        else:
            ax.legend(loc="best")


def _loss_panel(ax, here: pd.DataFrame, run_colour: dict) -> None:
    """The training loss of each run on a log axis (dotted if diverged), up to 10 x the largest loss of the
    runs that did not diverge."""
    for run_id, part in here.groupby("run_id", sort=False):
        finite = part[(part["value"] > 0) & (part["value"] < 1e300)]  # log axis; inf and NaN out
        diverged = part["outcome"].iloc[0] == "diverged"
        ax.plot(finite["step"], finite["value"], ":" if diverged else "-", color=run_colour.get(run_id, "0.5"),
                lw=1.2, marker=".", ms=2)
    ax.set(yscale="log", ylabel=plots.label("train_loss"))
    kept = here[(here["outcome"] != "diverged") & (here["value"] > 0) & (here["value"] < 1e300)]["value"]
    if len(kept):
        ax.set_ylim(0.5 * float(kept.min()), 10 * float(kept.max()))
