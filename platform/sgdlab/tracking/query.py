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

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from sgdlab import numerics
from sgdlab.tracking import tags
from sgdlab.tracking.location import check_sqlite_store, reading, retried, sqlite_path

READ_TABLES = ("experiments", "experiment_tags", "runs", "tags", "params", "metrics", "latest_metrics")
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
def read_only(path):
    """A read-only connection to a SQLite store that creates and changes no file (location.reading), or None
    while the store is being created (MLflow has not made all the tables read here yet): then it holds no runs.
    A damaged file raises StoreError (one line)."""
    check_sqlite_store(path)
    with reading(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        yield db if tables.issuperset(READ_TABLES) else None


def _sqlite_records(db, condition: str, args: tuple) -> list[RunRecord]:
    """The records (tags, params, latest metrics) of the runs that match `condition`, an SQL condition on
    MLflow's runs table, oldest first."""
    runs = db.execute(f"SELECT run_uuid, status, start_time FROM runs WHERE {condition} "
                      "ORDER BY start_time, run_uuid", args).fetchall()
    grouped: dict[str, dict] = {r[0]: {"metrics": {}, "params": {}, "tags": {}} for r in runs}
    run_filter = f"run_uuid IN (SELECT run_uuid FROM runs WHERE {condition})"
    for table, column in (("tags", "tags"), ("params", "params")):
        for run_id, key, value in db.execute(f"SELECT run_uuid, key, value FROM {table} WHERE {run_filter}", args):
            if run_id in grouped:
                grouped[run_id][column][key] = value
    for run_id, key, value, is_nan in db.execute(
            f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {run_filter}", args):
        if run_id in grouped:
            grouped[run_id]["metrics"][key] = float("nan") if is_nan else float(value)
    return [RunRecord(run_id=r[0], status=r[1], start_time=r[2] or 0, **grouped[r[0]]) for r in runs]


def sweep_experiments(uri: str) -> list[tuple[str, str, bool]]:
    """(sweep name, experiment id, whether it holds the trials view, tags.VIEW_TAG) of every sweep in the store,
    the most recently updated first (as MlflowClient.search_experiments orders them). A SQLite store is read
    read-only."""
    path = sqlite_path(uri)
    if path is None:
        from sgdlab.tracking.store import client

        found = retried(lambda: client(uri).search_experiments(order_by=["last_update_time DESC"]))
        return [(e.name, e.experiment_id, tags.VIEW_TAG in e.tags) for e in found if e.name != "Default"]

    def read() -> list[tuple[str, str, bool]]:
        with read_only(path) as db:
            return [] if db is None else [(name, str(exp_id), bool(view)) for name, exp_id, view in db.execute(
                "SELECT name, experiment_id, EXISTS (SELECT 1 FROM experiment_tags AS t WHERE t.experiment_id = "
                "e.experiment_id AND t.key = ?) FROM experiments AS e WHERE lifecycle_stage = 'active' AND name "
                "!= 'Default' ORDER BY last_update_time DESC, experiment_id", (tags.VIEW_TAG,))]

    return retried(read)


def _sqlite_runs(path, sweep: str) -> list[RunRecord]:
    with read_only(path) as db:
        if db is None:
            return []
        exp = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                         (sweep,)).fetchone()
        return [] if exp is None else _sqlite_records(db, "experiment_id = ? AND lifecycle_stage = 'active'", exp)


def run_record(uri: str, run_id: str) -> RunRecord | None:
    """The record of one run, or None if the store has no such run (a SQLite store read read-only)."""
    path = sqlite_path(uri)
    if path is not None:
        def read() -> list[RunRecord]:
            with read_only(path) as db:
                return [] if db is None else _sqlite_records(db, "run_uuid = ?", (run_id,))

        return next(iter(retried(read)), None)
    from sgdlab.tracking.store import client

    try:
        return record_of(retried(lambda: client(uri).get_run(run_id)))
    except Exception as exc:  # MlflowException RESOURCE_DOES_NOT_EXIST
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


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
    beats: dict[str, float] = {}
    for r in records:
        if tags.PACK in r.tags:
            beats[r.tags[tags.PACK]] = max(beats.get(r.tags[tags.PACK], 0.0), r.heartbeat)
    return _with_beats(records, beats)


def ended_since(uri: str, sweep: str, since_ms: int) -> dict[str, str] | None:
    """trial_id: status (FINISHED, FAILED or KILLED) of the trials whose newest train run started at or after
    since_ms (epoch milliseconds) and has ended: what a running sweep has done so far, for its progress bar.
    One indexed query on a SQLite store; None for any other store (a server's search is not cheap)."""
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None

    def read() -> list[tuple[str, str]]:
        with read_only(path) as db:
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


def trial_records(uri: str, experiment_id: str, trial_ids: list[str],
                  kind: str = "train") -> dict[str, list[RunRecord]]:
    """{trial_id: its active runs of one kind, oldest first} for these trials (every one present), with tags and
    statuses (no params or metrics) and the heartbeats of packed runs resolved (_pack_heartbeats): what the claim
    protocol reads (tracking/claims.py). A few indexed queries per 500 trials on a SQLite store, one search per
    trial and per pack of a RUNNING run on any other."""
    path = sqlite_path(uri)
    records = (retried(lambda: _sqlite_trial_records(path, experiment_id, trial_ids, kind)) if path is not None
               else _client_trial_records(uri, experiment_id, trial_ids, kind))
    out: dict[str, list[RunRecord]] = {trial: [] for trial in trial_ids}
    for record in records:
        out[record.trial_id].append(record)
    return out


def _sqlite_trial_records(path, experiment_id: str, trial_ids: list[str], kind: str) -> list[RunRecord]:
    if not path.is_file():
        return []
    with read_only(path) as db:
        if db is None:
            return []
        runs = []
        for i in range(0, len(trial_ids), 500):
            chunk = trial_ids[i:i + 500]
            runs += db.execute(
                "SELECT runs.run_uuid, runs.status, runs.start_time FROM runs "
                "JOIN tags AS trial ON trial.run_uuid = runs.run_uuid AND trial.key = ? "
                "JOIN tags AS kind ON kind.run_uuid = runs.run_uuid AND kind.key = ? AND kind.value = ? "
                "WHERE runs.experiment_id = ? AND runs.lifecycle_stage = 'active' "
                f"AND trial.value IN ({', '.join('?' * len(chunk))})",
                (tags.TRIAL_ID, tags.KIND, kind, int(experiment_id), *chunk)).fetchall()
        run_tags: dict[str, dict[str, str]] = {run[0]: {} for run in runs}
        ids = list(run_tags)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for run_id, key, value in db.execute(
                    f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({', '.join('?' * len(chunk))})", chunk):
                run_tags[run_id][key] = value
        packs = sorted({run_tags[run_id][tags.PACK] for run_id, status, _ in runs
                        if status == "RUNNING" and tags.PACK in run_tags[run_id]})
        beats = dict(db.execute(
            "SELECT pack.value, MAX(CAST(beat.value AS REAL)) FROM tags AS pack "
            "JOIN tags AS beat ON beat.run_uuid = pack.run_uuid AND beat.key = ? "
            f"WHERE pack.key = ? AND pack.value IN ({', '.join('?' * len(packs))}) GROUP BY pack.value",
            (tags.HEARTBEAT, tags.PACK, *packs)).fetchall()) if packs else {}
    records = [RunRecord(run_id=r[0], status=r[1], start_time=r[2] or 0, tags=run_tags[r[0]]) for r in runs]
    return _with_beats(sorted(records, key=lambda r: (r.start_time, r.run_id)), beats)


def _client_trial_records(uri: str, experiment_id: str, trial_ids: list[str], kind: str) -> list[RunRecord]:
    from sgdlab.tracking.store import client

    mlflow = client(uri)

    def search(flt: str) -> list[RunRecord]:
        return [record_of(run) for run in retried(lambda: mlflow.search_runs(
            [experiment_id], filter_string=flt, max_results=5000, order_by=["attributes.start_time ASC"]))]

    records = [r for trial in trial_ids
               for r in search(f"tags.`{tags.TRIAL_ID}` = '{trial}' and tags.`{tags.KIND}` = '{kind}'")]
    packs = sorted({r.tags[tags.PACK] for r in records if r.status == "RUNNING" and tags.PACK in r.tags})
    beats = {pack: max(r.heartbeat for r in search(f"tags.`{tags.PACK}` = '{pack}'")) for pack in packs}
    return _with_beats(records, beats)


def _with_beats(records: list[RunRecord], beats: dict[str, float]) -> list[RunRecord]:
    """RUNNING packed runs with their pack's newest heartbeat."""
    return [replace(r, tags={**r.tags, tags.HEARTBEAT: f"{beats[r.tags[tags.PACK]]:.3f}"})
            if r.status == "RUNNING" and r.tags.get(tags.PACK) in beats else r for r in records]


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
    """State of one trial from its runs (any order). Runs that lost the trial's claim to another (outcome
    'duplicate', tracking/claims.py) never trained it and do not count."""
    runs = [r for r in runs if r.outcome != tags.DUPLICATE]
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


def state_counts(runs_by_trial: dict[str, list[RunRecord]], trial_ids, stale_after_s: float,
                 now: float) -> tuple[dict[str, int], dict[str, int]]:
    """({state: trials}, {outcome: finished trials}) of these trials (STATES and the outcomes of finished runs)."""
    counts, outcomes = dict.fromkeys(STATES, 0), {"converged": 0, "diverged": 0, "max_steps": 0}
    for trial_id in trial_ids:
        runs = runs_by_trial.get(trial_id, [])
        state = trial_state(runs, stale_after_s, now)
        counts[state] += 1
        if state == "finished":
            outcome = finished_run(runs).outcome
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return counts, outcomes


def by_trial(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.trial_id, []).append(r)
    return out
