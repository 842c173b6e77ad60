"""The report of a sweep: figures, summary.csv and summary.md, drawn from what the sweep varied.

- Phase diagrams of test_error, weight_change and train_time over (alpha, T), one panel per P, when alpha
  and T both vary.
- T_c(P) when T and P vary (analysis.tc_section): the kernel-escape T_c at fixed weight-change thresholds and the
  performance T_c, with the exponents a, delta, gamma and b, at the largest alpha.
Params that still vary within those cells (B, optimizer, ...) split the figures, one per value.
- The perceptron on the teacher task (analysis.perceptron_section): the SGD regime of every trial, and when P varies
  the fitted b of w_par / ||w_perp|| ~ P^b and of ||w - w0|| ~ P^b per (chi, T) on the noise-dominated runs, with
  bootstrap intervals next to 1/(1+chi), and ||w - w0|| / T against P.
- A refinement's brackets (analysis.refine_section), for a sweep with a refine block.
- Curvature (analysis.curvature), each only when the records hold what it needs: sharpness trajectories against
  2/lr, end-of-training lambda_max against B, the mini-batch ratio E[lambda_max(H_B)] / lambda_max(H), the
  largest stable lr against B per optimizer with fitted slopes, spectral densities, Wu & Su's stability
  quantity and per-layer sensitivity, with their tables (probes.csv, lr_max.csv, ...).
summary.csv is frames.aggregate over seeds, grouped by every swept param. summary.md counts the trials, gives
the fitted numbers, lists what is failed, unfinished or missing (grid points of the recorded axis values with no
run; an axis value that no run reached cannot be seen from the records) and names the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.curvature import curvature_sections
from sgdlab.analysis.frames import (PARAMS, aggregate, grid_axes, missing_trials, param_columns,
                                    swept_columns, trial_frame)
from sgdlab.analysis.gate_section import gate_section
from sgdlab.analysis.perceptron_section import perceptron_section
from sgdlab.analysis.phase import phase_diagram
from sgdlab.analysis.probes import probe_frame
from sgdlab.analysis.refine_section import refine_section
from sgdlab.analysis.report_section import Numbers, splits
from sgdlab.analysis.tc_bootstrap import TcCriteria
from sgdlab.analysis.tc_section import tc_section
from sgdlab.tracking.query import RunRecord

PHASE_METRICS = ("test_error", "weight_change", "train_time")
OUTCOMES = ("converged", "diverged", "max_steps")
MAX_LISTED = 20

Figures = list[tuple[Path, str]]  # path, caption


@dataclass
class Report:
    figures: list[Path]
    summary: pd.DataFrame
    markdown: str
    tables: list[Path] = field(default_factory=list)  # CSVs besides summary.csv (probes.csv, lr_max.csv, ...)
    numbers: Numbers = field(default_factory=dict)  # headline numbers, logged as metrics of the sweep's run


def _refined_columns(refinement, frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns a refinement places per combination (its axis; lr and T for either of them): not a grid, so
    left out when looking for missing grid points."""
    if refinement is None:
        return ()
    axis = refinement[1]
    if axis in ("optim.lr", "optim.temperature"):
        return ("lr", "T")
    return (PARAMS.get(axis, axis),)


def _values(values) -> str:
    return ", ".join(plots.number(v) for v in values)


def _point(row: pd.Series, columns: list[str]) -> str:
    return " ".join(f"{c}={plots.number(row[c])}" for c in columns)


def _overview(frame: pd.DataFrame, swept: list[str], missing: pd.DataFrame) -> list[str]:
    if len(frame) == 0:
        return ["No train run is recorded for this sweep."]
    status = frame["status"].value_counts()
    outcomes = frame.loc[frame["status"] == "finished", "outcome"].value_counts()
    kinds = [*OUTCOMES, *sorted(set(outcomes.index) - set(OUTCOMES))]
    grid = grid_axes(frame)
    n_grid = len(frame) + len(missing)
    by_outcome = ", ".join(f"{outcomes.get(k, 0)} {k or 'without outcome'}" for k in kinds)
    lines = [f"{len(frame)} trials recorded: {status.get('finished', 0)} finished ({by_outcome}), "
             f"{status.get('failed', 0)} failed, {status.get('unfinished', 0)} unfinished"
             + (f"; {len(missing)} of the {n_grid} grid points ({' x '.join(grid)}) have no run." if grid else ".")]
    if status.get("finished", 0) < n_grid:
        lines += ["", f"**Partial report**: {status.get('finished', 0)} of {n_grid} trials have a finished run; "
                      "the others are listed under 'Not finished' and marked in the figures."]
    lines += ["", "Swept: " + ("; ".join(f"{c} = {_values(sorted(frame[c].dropna().unique()))}"
                                          for c in [*swept, "seed"] if c in frame) or "nothing") + "."]
    fixed = [c for c in param_columns(frame) if c not in swept and c != "seed" and frame[c].nunique() == 1]
    if fixed:
        lines.append("Fixed: " + "; ".join(f"{c} = {plots.number(frame[c].dropna().iloc[0])}" for c in fixed) + ".")
    return lines


def _not_finished(frame: pd.DataFrame, missing: pd.DataFrame) -> list[str]:
    columns = grid_axes(frame) or ["seed"]
    lines = []
    for status, heading in (("failed", "Failed"), ("unfinished", "Unfinished (running or stale)")):
        rows = frame[frame["status"] == status]
        if len(rows):
            lines += ["", f"{heading} ({len(rows)}):"]
            lines += [f"- {_point(r, columns)} (trial {r['trial_id']}, attempt {r['attempt']})"
                      + (f": {r['error']}" if r["error"] else "") for _, r in rows.head(MAX_LISTED).iterrows()]
            lines += [f"- ... and {len(rows) - MAX_LISTED} more"] if len(rows) > MAX_LISTED else []
    if len(missing):
        lines += ["", f"Missing, no run at all ({len(missing)}):"]
        lines += [f"- {_point(r, list(missing.columns))}" for _, r in missing.head(MAX_LISTED).iterrows()]
        lines += [f"- ... and {len(missing) - MAX_LISTED} more"] if len(missing) > MAX_LISTED else []
    return ["", "## Not finished", *lines] if lines else []


def _phase_diagrams(frame: pd.DataFrame, swept: list[str], out_dir: Path) -> tuple[list[str], Figures]:
    if not {"alpha", "T"} <= set(swept):
        return ["- Phase diagrams: not drawn (alpha and T do not both vary)."], []
    lines, figures = [], []
    for suffix, where, part in splits(frame, ["P", "alpha", "T"], swept):
        if not (part["status"] == "finished").any():
            lines.append(f"- Phase diagrams{' at ' + where if where else ''}: not drawn (no finished trial).")
            continue
        for metric in (m for m in PHASE_METRICS if m in part):
            path = phase_diagram(part, out_dir / f"phase_{metric}{suffix}.png", metric=metric, title=where)
            figures.append((path, f"{plots.label(metric)} over (alpha, T), one panel per P"
                                  + (f" ({where})" if where else "")))
    return lines, figures


def build_report(records: list[RunRecord], sweep: str, out_dir: Path, *, probes: list[RunRecord] | None = None,
                 histories: dict | None = None, densities: dict | None = None,
                 refinement: tuple[pd.DataFrame, str, str] | None = None,
                 criteria: TcCriteria = TcCriteria()) -> Report:
    """Write out_dir/summary.csv, out_dir/summary.md and the figures of the sweep's runs.

    records: the train runs (other kinds are ignored); probes: the probe runs; histories: {train run_id: {metric:
    [(step, value), ...]}} (tracking.histories.metric_histories of `sharpness`, optionally `train_loss`);
    densities: {probe run_id: table (eigenvalue, density)} (spectra.read_density of spectrum/density.csv);
    refinement: (brackets, axis, criterion) of a sweep with a refine block (analysis.refine_section);
    criteria: the T_c thresholds (report.tc_thresholds, report.tc_error_change).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trial_frame(records)
    swept = swept_columns(frame)
    summary = aggregate(frame, by=swept or ["P"])
    summary.to_csv(out_dir / "summary.csv", index=False)
    missing = missing_trials(frame.drop(columns=list(_refined_columns(refinement, frame)), errors="ignore"))
    figures: Figures = []
    findings: list[str] = []
    tables: Figures = []
    numbers: Numbers = {}
    if len(frame):
        for section in (_phase_diagrams, lambda *a: tc_section(*a, numbers, criteria),
                        lambda *a: perceptron_section(*a, numbers), lambda *a: gate_section(*a, numbers)):
            lines, drawn = section(frame, swept, out_dir)
            findings += lines
            figures += drawn
    measured = probe_frame(list(probes or []), [r for r in records if r.kind == "train"])
    if len(frame) or len(measured):
        lr_brackets = refinement[0] if refinement is not None and refinement[1] == "optim.lr" else None
        lines, drawn, tables = curvature_sections(frame, measured, histories or {}, densities or {}, out_dir,
                                                  numbers, lr_brackets)
        findings += lines
        figures += drawn
    if refinement is not None:
        lines, drawn, refined = refine_section(*refinement, out_dir, numbers)
        findings, figures, tables = findings + lines, figures + drawn, tables + refined
    text = [f"# sgdlab report: {sweep}", "", *_overview(frame, swept, missing), *_not_finished(frame, missing)]
    if findings:
        text += ["", "## Results", *findings]
    text += ["", "## Files", "", "- [summary.csv](summary.csv): per swept point, over seeds: trial counts, "
             "frac_diverged, and each metric's mean, standard error (std/sqrt(n)) and n (finished, "
             "non-diverged trials)"]
    text += [f"- [{path.name}]({path.name}): {caption}" for path, caption in [*tables, *figures]]
    markdown = "\n".join(text) + "\n"
    (out_dir / "summary.md").write_text(markdown)
    return Report(figures=[path for path, _ in figures], summary=summary, markdown=markdown,
                  tables=[path for path, _ in tables], numbers=numbers)
