"""Run records -> one pandas row per trial, the grid the trials span, and averages over seeds.

trial_frame: one row per trial (runs of kind 'train' grouped by `sgdlab.trial_id`).
  status 'finished'    the trial has a FINISHED attempt; the row is its latest one (highest attempt, then
                       latest start), with its outcome (converged | diverged | max_steps) and metrics (the
                       latest logged value of each);
  status 'failed'      no FINISHED attempt and the newest attempt FAILED or KILLED (row: params and error);
  status 'unfinished'  no FINISHED attempt and the newest attempt is still RUNNING, live or stale.
  Params become columns alpha, T, lr, B, P, seed, chi, d (numbers), optimizer and model (text); any other identity
  param that differs between trials (a swept `model.width`, `loss.name`, ...) keeps its dotted key as column name.

missing_trials: the recorded trials span a grid, the product of the values seen on its axes; grid points
  without any run are missing. The axes are the set of swept columns that determines all the others (lr is
  derived from T, or T from lr and B) with the smallest grid (key_columns).

aggregate: per group of `by`, over seeds. A metric's mean and standard error std/sqrt(n) (sample std, ddof=1;
  NaN when n < 2) use the finite values of the finished, non-diverged trials, n counted per metric;
  frac_diverged = n_diverged / n_finished.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from sgdlab.config.schema import NON_IDENTITY_GROUPS, NON_IDENTITY_KEYS
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord, by_trial, current, newest_run, trial_state

PARAMS = {**tags.NAME_ABBREVIATIONS, "seed": "seed", "optim.name": "optimizer", "model.name": "model",
          "data.chi": "chi", "data.dim": "d"}
TEXT_PARAMS = ("optimizer", "model")
META = ("trial_id", "status", "outcome", "attempt", "n_attempts", "run_id", "error")
STATUS = {"finished": "finished", "failed": "failed", "running": "unfinished", "outdated": "outdated"}
AXIS_PREFERENCE = ("alpha", "T", "P", "B", "optimizer", "seed", "lr")


def _is_identity_param(key: str) -> bool:
    return key.split(".", 1)[0] not in NON_IDENTITY_GROUPS and tuple(key.split(".", 1)) not in NON_IDENTITY_KEYS


def _trial_row(trial_id: str, runs: list[RunRecord]) -> dict:
    finished = [r for r in current(runs) if r.status == "FINISHED"]  # numbers of other numerics are left out
    chosen = newest_run(finished or runs)
    row = {"trial_id": trial_id, "status": STATUS[trial_state(runs, stale_after_s=math.inf)],
           "outcome": chosen.outcome if finished else "", "attempt": chosen.attempt, "n_attempts": len(runs),
           "run_id": chosen.run_id, "error": "" if finished else chosen.error}
    row.update({k: v for k, v in chosen.params.items() if _is_identity_param(k)})
    if finished:
        row.update(chosen.metrics)
    return row


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    values = column.replace("None", np.nan)
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().sum() == values.notna().sum() else values


def trial_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per trial (see the module docstring), sorted by P, alpha, T, seed."""
    rows = [_trial_row(tid, runs) for tid, runs in by_trial([r for r in records if r.kind == "train"]).items()]
    raw = pd.DataFrame(rows, columns=[*META, *PARAMS]) if not rows else pd.DataFrame(rows)
    param_keys = {k for r in records if r.kind == "train" for k in r.params if _is_identity_param(k)} & set(raw)
    extra = sorted(k for k in param_keys - set(PARAMS) if raw[k].nunique(dropna=False) > 1)
    metrics = sorted(set(raw.columns) - set(META) - param_keys - set(PARAMS))
    frame = raw.reindex(columns=[*META, *PARAMS, *extra, *metrics]).rename(columns=PARAMS)
    for column in [*PARAMS.values(), *extra]:
        if column in TEXT_PARAMS:
            frame[column] = frame[column].astype(object)
        else:
            frame[column] = _numeric_if_possible(frame[column])
    for column in metrics:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values(["P", "alpha", "T", "seed"], kind="stable").reset_index(drop=True)


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The params among the columns: alpha, T, lr, B, P, seed, optimizer and the dotted extra keys (a name with a
    '/' is a metric family member, e.g. layer_trace/hidden.0, even with a dot)."""
    return [c for c in frame.columns if c in PARAMS.values() or ("." in c and "/" not in c)]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META and c not in param_columns(frame)]


def swept_columns(frame: pd.DataFrame, include_seed: bool = False) -> list[str]:
    """Params that take more than one value across the trials."""
    return [c for c in param_columns(frame)
            if (include_seed or c != "seed") and frame[c].nunique(dropna=False) > 1]


def key_columns(frame: pd.DataFrame, candidates: list[str], given: list[str] | None = None) -> list[str]:
    """The subset of `candidates` that, with the `given` columns, determines all candidates: the one with the
    fewest value combinations (product of distinct counts), ties broken by AXIS_PREFERENCE (T, B over lr)."""
    given = given or []
    if not candidates:
        return []
    n_distinct = len(frame[[*given, *candidates]].drop_duplicates())

    def rank(columns: tuple[str, ...]):
        size = math.prod(frame[c].nunique(dropna=False) for c in columns)
        order = [AXIS_PREFERENCE.index(c) if c in AXIS_PREFERENCE else len(AXIS_PREFERENCE) for c in columns]
        return size, sorted(order)

    keys = [columns for n in range(1, len(candidates) + 1) for columns in itertools.combinations(candidates, n)
            if len(frame[[*given, *columns]].drop_duplicates()) == n_distinct]
    return list(min(keys, key=rank))


def grid_axes(frame: pd.DataFrame) -> list[str]:
    """The axes of the grid the trials span: key_columns of the swept columns, seed included."""
    return key_columns(frame, swept_columns(frame, include_seed=True))


def missing_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Grid points (values of grid_axes) that no recorded trial has, one row each."""
    axes = grid_axes(frame)
    if not axes:
        return pd.DataFrame()
    grid = pd.MultiIndex.from_product([sorted(frame[c].unique(), key=str) if frame[c].dtype == object
                                       else np.sort(frame[c].unique()) for c in axes], names=axes)
    seen = pd.MultiIndex.from_frame(frame[axes])
    return grid.difference(seen).to_frame(index=False)


def aggregate(frame: pd.DataFrame, by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """Per group of `by`: counts of trials by status, frac_diverged, and <metric>_mean, _se, _n."""
    metrics = metric_columns(frame) if metrics is None else metrics
    finished = frame["status"] == "finished"
    diverged = finished & (frame["outcome"] == "diverged")
    counts = frame[by].assign(n_trials=1, n_finished=finished, n_diverged=diverged,
                              n_failed=frame["status"] == "failed", n_unfinished=frame["status"] == "unfinished")
    kept = finished & ~diverged
    values = pd.DataFrame({m: pd.to_numeric(frame[m], errors="coerce") for m in metrics}, index=frame.index)
    work = pd.concat([counts, values.where(kept.to_numpy()[:, None] & np.isfinite(values))], axis=1)
    groups = work.groupby(by, dropna=False, sort=True)
    out = groups[["n_trials", "n_finished", "n_diverged", "n_failed", "n_unfinished"]].sum().astype(int)
    out["frac_diverged"] = out["n_diverged"] / out["n_finished"].where(out["n_finished"] > 0)
    n, mean, se = groups[metrics].count(), groups[metrics].mean(), groups[metrics].sem()
    columns = {}
    for m in metrics:
        columns.update({f"{m}_mean": mean[m], f"{m}_se": se[m], f"{m}_n": n[m]})
    return pd.concat([out, pd.DataFrame(columns, index=out.index)], axis=1).reset_index()
