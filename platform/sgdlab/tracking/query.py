"""What the store holds for a sweep: run records, and each trial's state.

A trial's state, from all of its runs (attempts):
  finished  it has a FINISHED run (outcome converged, diverged or max_steps);
  running   its newest run is RUNNING with a heartbeat younger than tracking.stale_after_s;
  stale     its newest run is RUNNING with an older heartbeat (the worker or the driver died);
  failed    its newest run is FAILED or KILLED;
  pending   it has no run.
Reading never creates a store: a SQLite file that does not exist is an empty store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlflow.entities import ViewType

from sgdlab.tracking import tags
from sgdlab.tracking.store import client, find_experiment_id, retried, sqlite_path

STATES = ("finished", "failed", "running", "stale", "pending")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    trial_id: str
    kind: str
    status: str  # MLflow: RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    attempt: int
    outcome: str
    error: str
    heartbeat: float
    start_time: int
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def store_exists(uri: str) -> bool:
    path = sqlite_path(uri)
    return path is None or path.is_file()


def sweep_runs(uri: str, sweep: str, kind: str | None = "train") -> list[RunRecord]:
    """All runs of the sweep's experiment (of one kind, or all kinds with kind=None), oldest first."""
    if not store_exists(uri):
        return []
    mlflow = client(uri)
    exp_id = find_experiment_id(mlflow, sweep)
    if exp_id is None:
        return []
    flt = f"tags.`{tags.KIND}` = '{kind}'" if kind else ""
    records, token = [], None
    while True:
        page = retried(lambda: mlflow.search_runs([exp_id], filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY,
                                                  max_results=5000, order_by=["attributes.start_time ASC"],
                                                  page_token=token))
        for run in page:
            t = run.data.tags
            records.append(RunRecord(
                run_id=run.info.run_id, trial_id=t.get(tags.TRIAL_ID, ""), kind=t.get(tags.KIND, ""),
                status=run.info.status, attempt=int(t.get(tags.ATTEMPT, "1") or 1),
                outcome=t.get(tags.OUTCOME, ""), error=t.get(tags.ERROR, ""),
                heartbeat=float(t.get(tags.HEARTBEAT, "0") or 0), start_time=run.info.start_time or 0,
                metrics=dict(run.data.metrics), params=dict(run.data.params), tags=dict(t)))
        token = page.token
        if not token:
            return records


def trial_state(runs: list[RunRecord], stale_after_s: float, now: float | None = None) -> str:
    """State of one trial from its runs (any order)."""
    if not runs:
        return "pending"
    if any(r.status == "FINISHED" for r in runs):
        return "finished"
    newest = max(runs, key=lambda r: (r.attempt, r.start_time))
    if newest.status in ("RUNNING", "SCHEDULED"):
        fresh = (now if now is not None else time.time()) - newest.heartbeat <= stale_after_s
        return "running" if fresh else "stale"
    return "failed"


def by_trial(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.trial_id, []).append(r)
    return out
