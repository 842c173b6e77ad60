"""Probe records -> one pandas row per probed trial, with the params of the train run it measured.

A probe run (kind 'probe') measured the final checkpoint of the train run named by its tag `sgdlab.train_run`.
probe_frame builds one row per trial, like frames.trial_frame:
  - only FINISHED probe runs count, and only those of one curvature matrix (tag `sgdlab.matrix`): 'full' (the
    Hessian) when any probe measured it, else the most frequent one (the matrix is in the `matrix` column);
  - the trial's measured train run is the one of its newest finished probe; the row's metrics are those of every
    finished probe of that train run, a newer probe's value replacing an older one's (a later `sgdlab probe`
    with more measurements adds to the row);
  - params come from the train run (as in trial_frame: alpha, T, lr, B, P, seed, optimizer, dotted keys of other
    swept params) and `outcome` is the train run's outcome, so that seed averages (frames.aggregate) leave out
    probes of diverged trials as they leave out the trials; without the train run among the records, the
    probe's own params (the same trial config) and an empty outcome;
  - added columns: train_run, probe_run (the newest probe), probe_runs (all, newest first, ';'-separated),
    N_probe (the examples the probe's Hessian averages over: min(probe.n_examples, P), P when null) and
    lanczos_converged (the probe's outcome is 'converged').
batch_table and layer_table unfold the per-batch-size (`<metric>/B<b>`) and per-layer (`layer_*/<param>`) metric
families into long tables.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from sgdlab.analysis.frames import META, metric_columns, param_columns, trial_frame
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord

PREFERRED_MATRIX = "full"
PROBE_COLUMNS = ("train_run", "probe_run", "probe_runs", "matrix", "N_probe", "lanczos_converged")
LAYER_METRICS = {"layer_trace": "trace", "layer_trace_se": "trace_se", "layer_lambda_max": "lambda_max"}


def chosen_matrix(probes: list[RunRecord]) -> str | None:
    """'full' if any finished probe measured it, else the most frequent matrix; None without finished probes."""
    counts = Counter(p.tags.get(tags.MATRIX, "") for p in probes if p.status == "FINISHED")
    if not counts:
        return None
    return PREFERRED_MATRIX if PREFERRED_MATRIX in counts else counts.most_common(1)[0][0]


def _n_probe(probe: RunRecord, P) -> float:
    raw = probe.params.get("probe.n_examples", "None")
    n = float(raw) if raw not in ("None", "", "null") else np.inf
    P = float(P) if P is not None and np.isfinite(P) else np.inf
    return min(n, P) if min(n, P) < np.inf else np.nan


def probe_frame(probes: list[RunRecord], trains: list[RunRecord]) -> pd.DataFrame:
    """One row per probed trial (module docstring); empty (no rows) without finished probes."""
    matrix = chosen_matrix(probes)
    if matrix is None:
        return pd.DataFrame(columns=[*META, *PROBE_COLUMNS])
    finished = [p for p in probes if p.status == "FINISHED" and p.tags.get(tags.MATRIX, "") == matrix
                and p.kind == "probe"]
    train_by_id = {r.run_id: r for r in trains}
    by_trial: dict[str, list[RunRecord]] = {}
    for p in finished:
        by_trial.setdefault(p.trial_id, []).append(p)
    pseudo, extra = [], {}
    for trial_id, runs in by_trial.items():
        runs = sorted(runs, key=lambda r: (r.start_time, r.attempt))
        train_run = runs[-1].tags.get(tags.TRAIN_RUN, "")
        measured = [p for p in runs if p.tags.get(tags.TRAIN_RUN, "") == train_run]
        metrics: dict[str, float] = {}
        for p in measured:  # oldest first: newer values replace older ones
            metrics.update(p.metrics)
        train = train_by_id.get(train_run)
        source = train or measured[-1]
        run_tags = {tags.TRIAL_ID: trial_id, tags.KIND: "train", tags.ATTEMPT: source.tags.get(tags.ATTEMPT, "1"),
                    tags.OUTCOME: train.outcome if train else "", tags.NUMERICS: str(source.numerics)}
        pseudo.append(RunRecord(run_id=train_run, status="FINISHED", start_time=source.start_time, metrics=metrics,
                                params=dict(source.params), tags=run_tags))
        extra[trial_id] = {"train_run": train_run, "probe_run": measured[-1].run_id,
                           "probe_runs": ";".join(p.run_id for p in reversed(measured)), "matrix": matrix,
                           "lanczos_converged": measured[-1].outcome == "converged", "_probe": measured[-1]}
    frame = trial_frame(pseudo)
    added = pd.DataFrame([extra[t] for t in frame["trial_id"]], index=frame.index)
    added["N_probe"] = [_n_probe(p, P) for p, P in zip(added.pop("_probe"), frame["P"])]
    params, metrics = param_columns(frame), metric_columns(frame)
    meta = [c for c in META if c in frame]
    return pd.concat([frame[meta], added[list(PROBE_COLUMNS)], frame[params], frame[metrics]], axis=1)


def family(frame: pd.DataFrame, prefix: str) -> dict[str, str]:
    """{suffix: column} for the columns '<prefix>/<suffix>' of a frame, e.g. family(f, 'layer_trace')."""
    return {c[len(prefix) + 1:]: c for c in frame.columns if c.startswith(prefix + "/")}


def batch_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric family '<metric>/B<b>' as a long table: the frame's non-metric columns, b, value (finite only)."""
    columns = {int(m.group(1)): c for s, c in family(frame, metric).items() if (m := re.fullmatch(r"B(\d+)", s))}
    keep = [c for c in frame.columns if c not in metric_columns(frame) or c in PROBE_COLUMNS]
    parts = [frame[keep].assign(b=b, value=pd.to_numeric(frame[c], errors="coerce"))
             for b, c in sorted(columns.items())]
    if not parts:
        return pd.DataFrame(columns=[*keep, "b", "value"])
    table = pd.concat(parts, ignore_index=True)
    return table[np.isfinite(table["value"].astype(float))].reset_index(drop=True)


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per probed trial and layer (parameter block): trial_id, outcome, layer, trace, trace_se, lambda_max."""
    layers = sorted(set().union(*(family(frame, prefix) for prefix in LAYER_METRICS)))
    rows = []
    for _, row in frame.iterrows():
        for layer in layers:
            values = {name: float(row.get(f"{prefix}/{layer}", np.nan)) for prefix, name in LAYER_METRICS.items()}
            if any(np.isfinite(v) for v in values.values()):
                rows.append({"trial_id": row["trial_id"], "outcome": row["outcome"], "layer": layer, **values})
    return pd.DataFrame(rows, columns=["trial_id", "outcome", "layer", *LAYER_METRICS.values()])
