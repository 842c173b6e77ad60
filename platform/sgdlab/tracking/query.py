"""What the store holds for a sweep: run records, and each trial's state.

A trial's state, from all of its runs (attempts):
  finished  it has a FINISHED run (outcome converged, diverged or max_steps);
  running   its newest run is RUNNING with a heartbeat younger than tracking.stale_after_s (a packed run's
            heartbeat is the newest of its pack's runs: tag sgdlab.pack);
  stale     its newest run is RUNNING with an older heartbeat (the worker or the driver died);
  failed    its newest run is FAILED or KILLED;
  pending   it has no run;
  outdated  all of its runs were computed under another numerics version (sgdlab/numerics.py).
Only runs of the current numerics version count for the other states.
Reading never creates a store. A SQLite store is read directly and read-only from MLflow's tables (runs, tags,
params, latest_metrics, experiments), which keeps `sgdlab status` free of the 2-3 s mlflow import; any other
store is read with MlflowClient. A test checks that both readers return the same records.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
import time
from dataclasses import dataclass, field, replace

from sgdlab import numerics
from sgdlab.tracking import tags
from sgdlab.tracking.location import retried, sqlite_path

READ_TABLES = ("experiments", "runs", "tags", "params", "metrics", "latest_metrics")
STATES = ("finished", "failed", "running", "stale", "pending", "outdated")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str  # MLflow: RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_time: int
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return self.tags.get(tags.TRIAL_ID, "")

    @property
    def sweep(self) -> str:
        return self.tags.get(tags.SWEEP, "")

    @property
    def run_name(self) -> str:
        return self.tags.get(tags.RUN_NAME, "")

    @property
    def kind(self) -> str:
        return self.tags.get(tags.KIND, "")

    @property
    def attempt(self) -> int:
        return int(self.tags.get(tags.ATTEMPT) or 1)

    @property
    def outcome(self) -> str:
        return self.tags.get(tags.OUTCOME, "")

    @property
    def error(self) -> str:
        return self.tags.get(tags.ERROR, "")

    @property
    def numerics(self) -> int:
        """The numerics version the run was computed with (1 before runs recorded it)."""
        return int(self.tags.get(tags.NUMERICS) or 1)

    @property
    def heartbeat(self) -> float:
        return float(self.tags.get(tags.HEARTBEAT) or 0)


@contextmanager
def _read_only(path):
    """A read-only connection to a SQLite store (reading never creates or changes it), or None while the store
    is being created (MLflow has not made all the tables read here yet): then it holds no runs."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        yield db if tables.issuperset(READ_TABLES) else None
    finally:
        db.close()


def _sqlite_runs(path, sweep: str) -> list[RunRecord]:
    with _read_only(path) as db:
        if db is None:
            return []
        exp = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                         (sweep,)).fetchone()
        if exp is None:
            return []
        runs = db.execute("SELECT run_uuid, status, start_time FROM runs WHERE experiment_id = ? "
                          "AND lifecycle_stage = 'active' ORDER BY start_time, run_uuid", exp).fetchall()
        grouped: dict[str, dict] = {r[0]: {"metrics": {}, "params": {}, "tags": {}} for r in runs}
        run_filter = "run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = ?)"
        for table, column in (("tags", "tags"), ("params", "params")):
            for run_id, key, value in db.execute(f"SELECT run_uuid, key, value FROM {table} WHERE {run_filter}", exp):
                if run_id in grouped:
                    grouped[run_id][column][key] = value
        for run_id, key, value, is_nan in db.execute(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {run_filter}", exp):
            if run_id in grouped:
                grouped[run_id]["metrics"][key] = float("nan") if is_nan else float(value)
    return [RunRecord(run_id=r[0], status=r[1], start_time=r[2] or 0, **grouped[r[0]]) for r in runs]


def record_of(run) -> RunRecord:
    """The record of an MLflow Run (as MlflowClient returns it)."""
    return RunRecord(run_id=run.info.run_id, status=run.info.status, start_time=run.info.start_time or 0,
                     metrics=dict(run.data.metrics), params=dict(run.data.params), tags=dict(run.data.tags))


def _client_runs(uri: str, sweep: str) -> list[RunRecord]:
    from mlflow.entities import ViewType

    from sgdlab.tracking.store import client, find_experiment_id

    mlflow = client(uri)
    exp_id = find_experiment_id(mlflow, sweep)
    if exp_id is None:
        return []
    records, token = [], None
    while True:
        page = retried(lambda: mlflow.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000,
                                                  order_by=["attributes.start_time ASC"], page_token=token))
        records += [record_of(run) for run in page]
        token = page.token
        if not token:
            return sorted(records, key=lambda r: (r.start_time, r.run_id))


def sweep_runs(uri: str, sweep: str, kind: str | None = "train") -> list[RunRecord]:
    """All active runs of the sweep's experiment (of one kind, or every kind with kind=None), oldest first."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return []
    records = retried(lambda: _sqlite_runs(path, sweep)) if path is not None else _client_runs(uri, sweep)
    return [r for r in _pack_heartbeats(records) if kind is None or r.kind == kind]


def _pack_heartbeats(records: list[RunRecord]) -> list[RunRecord]:
    """RUNNING runs of a pack carry the newest heartbeat of the pack's runs (the pack refreshes one run for all)."""
    newest: dict[str, float] = {}
    for r in records:
        if tags.PACK in r.tags:
            newest[r.tags[tags.PACK]] = max(newest.get(r.tags[tags.PACK], 0.0), r.heartbeat)
    return [replace(r, tags={**r.tags, tags.HEARTBEAT: f"{newest[r.tags[tags.PACK]]:.3f}"})
            if r.status == "RUNNING" and tags.PACK in r.tags else r for r in records]


def ended_since(uri: str, sweep: str, since_ms: int) -> dict[str, str] | None:
    """trial_id: status (FINISHED, FAILED or KILLED) of the trials whose newest train run started at or after
    since_ms (epoch milliseconds) and has ended: what a running sweep has done so far, for its progress bar.
    One indexed query on a SQLite store; None for any other store (a server's search is not cheap)."""
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None

    def read() -> list[tuple[str, str]]:
        with _read_only(path) as db:
            return [] if db is None else db.execute(
                "SELECT trial.value, runs.status FROM runs "
                "JOIN experiments ON experiments.experiment_id = runs.experiment_id "
                "JOIN tags AS trial ON trial.run_uuid = runs.run_uuid AND trial.key = ? "
                "JOIN tags AS kind ON kind.run_uuid = runs.run_uuid AND kind.key = ? AND kind.value = 'train' "
                "WHERE experiments.name = ? AND experiments.lifecycle_stage = 'active' "
                "AND runs.lifecycle_stage = 'active' AND runs.start_time >= ? ORDER BY runs.start_time",
                (tags.TRIAL_ID, tags.KIND, sweep, since_ms)).fetchall()

    newest = dict(retried(read))  # later runs of a trial replace earlier ones
    return {trial: status for trial, status in newest.items() if status in ("FINISHED", "FAILED", "KILLED")}


def trials_with_runs(uri: str, experiment_id: str, trial_ids: list[str]) -> set[str] | None:
    """The trial_ids among these that have an active train run in the experiment (those a job must take over
    from); one indexed query per 500 trials on a SQLite store, None for any other store."""
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None

    def read() -> set[str]:
        found = set()
        with _read_only(path) as db:
            if db is None:
                return found
            for i in range(0, len(trial_ids), 500):
                chunk = trial_ids[i:i + 500]
                found.update(row[0] for row in db.execute(
                    "SELECT DISTINCT trial.value FROM runs "
                    "JOIN tags AS trial ON trial.run_uuid = runs.run_uuid AND trial.key = ? "
                    "JOIN tags AS kind ON kind.run_uuid = runs.run_uuid AND kind.key = ? AND kind.value = 'train' "
                    "WHERE runs.experiment_id = ? AND runs.lifecycle_stage = 'active' "
                    f"AND trial.value IN ({', '.join('?' * len(chunk))})",
                    (tags.TRIAL_ID, tags.KIND, int(experiment_id), *chunk)))
        return found

    return retried(read)


def newest_run(runs: list[RunRecord]) -> RunRecord:
    """A trial's newest run: the highest attempt, then the latest start."""
    return max(runs, key=lambda r: (r.attempt, r.start_time))


def next_attempt(runs: list[RunRecord]) -> int:
    """The attempt number of a trial's next run: one more than the highest recorded (1 for none)."""
    return max((r.attempt for r in runs), default=0) + 1


def current(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs computed under this code's numerics version."""
    return [r for r in runs if r.numerics == numerics.VERSION]


def finished_run(runs: list[RunRecord]) -> RunRecord | None:
    """A trial's FINISHED run of the current numerics version (there is at most one), or None."""
    return next((r for r in current(runs) if r.status == "FINISHED"), None)


def trial_state(runs: list[RunRecord], stale_after_s: float, now: float | None = None) -> str:
    """State of one trial from its runs (any order)."""
    if not runs:
        return "pending"
    runs = current(runs)
    if not runs:
        return "outdated"
    if finished_run(runs) is not None:
        return "finished"
    newest = newest_run(runs)
    if newest.status in ("RUNNING", "SCHEDULED"):
        fresh = (now if now is not None else time.time()) - newest.heartbeat <= stale_after_s
        return "running" if fresh else "stale"
    return "failed"


def by_trial(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.trial_id, []).append(r)
    return out


History = list[tuple[int, float]]  # (step, value), in the order of step (then of logging time)


def _sqlite_histories(path, run_ids: list[str], keys: list[str]) -> dict[str, dict[str, History]]:
    out: dict[str, dict[str, list]] = {run_id: {key: [] for key in keys} for run_id in run_ids}
    with _read_only(path) as db:
        if db is None:
            return out
        key_marks = ",".join("?" * len(keys))
        for i in range(0, len(run_ids), 500):  # bounded number of SQL variables per statement
            chunk = run_ids[i:i + 500]
            rows = db.execute(
                f"SELECT run_uuid, key, step, value, is_nan FROM metrics WHERE run_uuid IN "
                f"({','.join('?' * len(chunk))}) AND key IN ({key_marks}) ORDER BY run_uuid, key, step, timestamp, "
                "value", [*chunk, *keys])
            for run_id, key, step, value, is_nan in rows:
                out[run_id][key].append((int(step), float("nan") if is_nan else float(value)))
    return out


def _client_histories(uri: str, run_ids: list[str], keys: list[str]) -> dict[str, dict[str, History]]:
    from sgdlab.tracking.store import client

    mlflow = client(uri)
    out: dict[str, dict[str, list]] = {}
    for run_id in run_ids:
        out[run_id] = {}
        for key in keys:
            points = retried(lambda: mlflow.get_metric_history(run_id, key))
            ordered = sorted(points, key=lambda m: (m.step, m.timestamp, m.value))
            out[run_id][key] = [(int(m.step), float(m.value)) for m in ordered]
    return out


def metric_histories(uri: str, run_ids: list[str], keys: list[str]) -> dict[str, dict[str, History]]:
    """Every logged value of the metrics `keys` of the runs `run_ids`: {run_id: {key: [(step, value), ...]}}.

    Each run and key is present, a metric never logged by a run with an empty list; points are sorted by step
    (ties by logging time). NaN reads back as NaN and +-inf as MLflow stores it (+-1.7976931348623157e308).
    A SQLite store is read directly and read-only from MLflow's `metrics` table (one query per 500 runs); any
    other store with MlflowClient.get_metric_history (one request per run and key)."""
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    if not run_ids or not keys:
        return {run_id: {key: [] for key in keys} for run_id in run_ids}
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            return {run_id: {key: [] for key in keys} for run_id in run_ids}
        return retried(lambda: _sqlite_histories(path, run_ids, keys))
    return _client_histories(uri, run_ids, keys)
