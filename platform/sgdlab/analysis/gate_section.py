"""The report's feature-learning gate: on which task is feature learning (the smallest alpha) worse than lazy
training (the largest alpha)? Sclocchi, Geiger & Wyart's "increasing T and decreasing alpha can have opposite effects
on performance" can only show on such a task.

Drawn when alpha varies at one T. A task is one value of the other swept params (data.name, P, chi, d, ...).
Per task and alpha, over the seeds whose net fitted its data (outcome converged; trials stopped at max_steps or
diverged are left out and counted): the test error's mean e and standard error s = std / sqrt(n). The gap
D = e(alpha_min) - e(alpha_max) has the standard error sqrt(s_min^2 + s_max^2), and the task passes the gate when
D >= GATE_SIGMAS x that error. A verdict needs MIN_SEEDS fitted seeds at both ends. gate.csv holds the table;
gate_test_error_vs_alpha.png the test error against alpha, one line per task.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.frames import aggregate, key_columns
from sgdlab.analysis.report_section import Files, Numbers, markdown_table, number_key, plus_minus

GATE_SIGMAS = 3.0  # feature learning worse than lazy by at least this many standard errors of the gap
MIN_SEEDS = 2  # fitted seeds at each end of the alpha range (a standard error needs two)
PASSES = "passes the gate"
NO_VERDICT = "no verdict"


def task_columns(frame: pd.DataFrame, swept: list[str]) -> list[str]:
    """The swept params other than alpha and seed that tell the tasks apart: data.name and P when they vary, then
    the key columns of the others given those (chi, d; not a data.teacher_width that the data set fixes)."""
    named = [c for c in ("data.name", "P") if c in swept]
    others = [c for c in swept if c not in ("alpha", "seed", *named)]
    if not others or named and len(frame[named].drop_duplicates()) == len(frame[[*named, *others]].drop_duplicates()):
        return named
    return [*named, *key_columns(frame, others, given=named)]


def task_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """'sphere_field P=2048', 'teacher_perceptron chi=1 d=16': the data set's name, then the other task
    params that the row has (a param its data set lacks is NaN and left out)."""
    def label(row: pd.Series) -> str:
        parts = [str(row[c]) if c == "data.name" else f"{c.removeprefix('data.')}={plots.number(row[c])}"
                 for c in columns if not (isinstance(row[c], float) and math.isnan(row[c]))]
        return " ".join(parts) or "all trials"
    return frame.apply(label, axis=1) if len(frame) else pd.Series([], dtype=object)


def gate_cells(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per task and alpha: test_error_mean, test_error_se and test_error_n over the fitted seeds, and n_unfitted
    (finished trials stopped at max_steps or diverged)."""
    finished = frame[frame["status"] == "finished"].assign(task=lambda f: task_labels(f, columns))
    fitted = finished[finished["outcome"] == "converged"]
    cells = aggregate(fitted, by=["task", "alpha"], metrics=["test_error"])
    unfitted = finished[finished["outcome"] != "converged"].groupby(["task", "alpha"]).size().rename("n_unfitted")
    cells = cells.merge(unfitted.reset_index(), on=["task", "alpha"], how="outer").fillna({"n_unfitted": 0})
    return cells.sort_values(["task", "alpha"]).reset_index(drop=True)


def gate_verdicts(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per task: the errors at the smallest and largest alpha, D = e(alpha_min) - e(alpha_max), its
    standard error sqrt(s_min^2 + s_max^2), z = D / that error, and the verdict."""
    rows = []
    for task, part in cells.groupby("task", sort=True):
        part = part.sort_values("alpha")
        feature, lazy = part.iloc[0], part.iloc[-1]
        difference = feature["test_error_mean"] - lazy["test_error_mean"]
        se = math.hypot(feature["test_error_se"], lazy["test_error_se"])
        short = [f"alpha = {plots.number(end['alpha'])}" for end in (feature, lazy)
                 if not end["test_error_n"] >= MIN_SEEDS]
        if len(part) < 2:
            verdict = f"{NO_VERDICT} (one alpha)"
        elif short:
            verdict = f"{NO_VERDICT} (fewer than {MIN_SEEDS} fitted seeds at {' and '.join(short)})"
        else:
            verdict = PASSES if difference > 0 and difference >= GATE_SIGMAS * se else "does not pass"
        rows.append({"task": task, "alpha_feature": feature["alpha"], "alpha_lazy": lazy["alpha"],
                     "error_feature": feature["test_error_mean"], "se_feature": feature["test_error_se"],
                     "error_lazy": lazy["test_error_mean"], "se_lazy": lazy["test_error_se"],
                     "difference": difference, "difference_se": se, "z": difference / se if se > 0 else math.nan,
                     "verdict": verdict})
    return pd.DataFrame(rows)


def gate_section(frame: pd.DataFrame, swept: list[str], out_dir: Path, numbers: Numbers) -> tuple[list[str], Files]:
    """The gate's lines for summary.md and its figure, when alpha varies at one T; adds summary/gate_difference,
    gate_difference_se and gate_passes per task with a verdict, and gate_tasks_passing, to `numbers`."""
    if "alpha" not in swept or frame["T"].nunique(dropna=False) != 1 or "test_error" not in frame:
        return [], []
    columns = task_columns(frame, swept)
    cells = gate_cells(frame, columns)
    if cells["test_error_n"].fillna(0).sum() == 0:
        return ["- Feature-learning gate: not computed (no trial fitted its data)."], []
    table = gate_verdicts(cells)
    T = plots.number(frame["T"].iloc[0])
    table.to_csv(out_dir / "gate.csv", index=False)
    alphas = sorted(cells["alpha"].unique())
    by_cell = cells.set_index(["task", "alpha"])

    def error(task, alpha) -> str:
        if (task, alpha) not in by_cell.index or not by_cell.loc[(task, alpha), "test_error_n"] > 0:
            return "-"
        cell = by_cell.loc[(task, alpha)]
        return f"{plus_minus(cell['test_error_mean'], cell['test_error_se'])} ({int(cell['test_error_n'])})"

    rows = [[r.task, *(error(r.task, a) for a in alphas), plus_minus(r.difference, r.difference_se),
             f"{r.z:.2g}" if np.isfinite(r.z) else "-", r.verdict] for r in table.itertuples()]
    passing = table.loc[table["verdict"] == PASSES, "task"].tolist()
    lines = ["", f"Feature-learning gate at T = {T}: test error, mean ± s.e. (fitted seeds), per task and alpha; "
                 f"D = e(alpha_min) - e(alpha_max) ± sqrt(s_min^2 + s_max^2); a task passes when feature learning "
                 f"is worse than lazy training by at least {GATE_SIGMAS:g} standard errors of D, z = D / s.e. "
                 "([gate.csv](gate.csv)).", "",
             *markdown_table(["task", *(f"alpha = {plots.number(a)}" for a in alphas), "D", "z", "verdict"], rows),
             "", f"- {len(passing)} of {len(table)} tasks pass the gate" + (": " + ", ".join(passing) + "." if passing
                 else ": on none of them is feature learning worse than lazy training by "
                      f"{GATE_SIGMAS:g} standard errors.")]
    unfitted = cells[cells["n_unfitted"] > 0]
    if len(unfitted):
        lines.append("- Left out, not fitted (stopped at max_steps or diverged): " + "; ".join(
            f"{r.task} alpha = {plots.number(r.alpha)}: {int(r.n_unfitted)}" for r in unfitted.itertuples()) + ".")
    for r in table[~table["verdict"].str.startswith(NO_VERDICT)].itertuples():
        numbers.update({number_key("gate_difference", r.task): r.difference,
                        number_key("gate_difference_se", r.task): r.difference_se,
                        number_key("gate_passes", r.task): float(r.verdict == PASSES)})
    numbers[number_key("gate_tasks_passing")] = float(len(passing))
    drawn = cells[cells["test_error_n"] > 0]
    path = plots.lines_plot(drawn, "alpha", "test_error_mean", out_dir / "gate_test_error_vs_alpha.png", group="task",
                            yerr="test_error_se", logy=False, ylabel=plots.label("test_error"), title=f"T = {T}")
    return lines, [(path, "test error against alpha, one line per task (fitted seeds, mean ± s.e.)")]
