"""The MLflow store of a sweep: the sweep's experiment and its parent run. `open_sweep` is what the
driver calls before any worker starts: it creates the database, the experiment (named after the sweep) and
the sweep run that every trial run is nested under.

SQLite stores run in write-ahead-log mode with synchronous=NORMAL: a commit appends to the log without waiting
for the disk, which halves the cost of MLflow's many small transactions (several per log_batch). The database
stays consistent if a process dies; a power cut may lose the last commits (sgdlab then sees a stale run).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import sqlite3
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in job output

from mlflow.entities import Metric, ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from sgdlab import paths  # noqa: E402
from sgdlab.tracking import tags  # noqa: E402
from sgdlab.tracking.location import (check_sqlite_store, damaged_store, is_damage, retried,  # noqa: E402
                                     sqlite_path)


def git_state() -> dict[str, str]:
    """Commit and dirtiness of the sgdlab checkout (empty strings for an installed wheel, which is no checkout)."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(paths.REPO_ROOT), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD") if (paths.REPO_ROOT / ".git").exists() else ""
    return {tags.GIT_SHA: sha, tags.GIT_DIRTY: str(bool(git("status", "--porcelain"))).lower() if sha else ""}


def source_tags(git: dict[str, str]) -> dict[str, str]:
    """MLflow's own run tags, which fill the UI's Source, Version and User columns: the program, the checkout's
    commit and the user who ran the driver."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database (some containers)
        user = str(os.getuid())
    out = {"mlflow.source.name": "sgdlab", "mlflow.source.type": "LOCAL", "mlflow.user": user}
    if git.get(tags.GIT_SHA):
        out["mlflow.source.git.commit"] = git[tags.GIT_SHA]
    return out


@dataclass(frozen=True)
class SweepHandle:
    """What a worker needs to write its trial run: store, experiment, parent run."""

    uri: str
    experiment_id: str
    sweep_run_id: str
    sweep: str
    run_tags: dict[str, str] = field(default_factory=dict)  # added to every trial run (git state)
    submission: str = ""  # this driver command's id (tag sgdlab.submission on its runs; tracking/claims.py)


@event.listens_for(Engine, "connect")
def _sqlite_write_ahead_log(dbapi_connection, _record) -> None:
    """Every SQLite connection MLflow opens: WAL journal (kept in the file once set), synchronous=NORMAL."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # locked by a writer: another connection has set it (or will)
        pass
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def find_experiment_id(mlflow: MlflowClient, sweep: str) -> str | None:
    exp = retried(lambda: mlflow.get_experiment_by_name(sweep))
    return exp.experiment_id if exp is not None else None


# The MLflow UI (3.x) opens an experiment by its kind: its GenAI view (traces, evaluation runs) unless the
# experiment says it is model development.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
VIEW_METRICS = ("test_error", "train_loss", "weight_change", "train_time", "steps", "sharpness")


def trials_view(params: list[str]) -> str:
    """The shared view of a sweep's runs (JSON, as MLflow's UI stores it): every run a row, sorted by name (the UI
    nests child runs, collapsed under the sweep run, only while runs are sorted by date), and as columns the dataset,
    the swept params, the final metrics of the records contract and the outcome."""
    columns = ["attributes.`Dataset`", *(f"params.`{p}`" for p in params),
               *(f"metrics.`{m}`" for m in VIEW_METRICS), f"tags.`{tags.OUTCOME}`"]
    return json.dumps({"orderByKey": f"tags.`{tags.RUN_NAME}`", "orderByAsc": True, "searchFilter": "",
                       "selectedColumns": columns})


def experiment_url(base: str, experiment_id: str, view: bool = False) -> str:
    """A sweep's experiment in the MLflow UI's model-training view (MLflow 3 opens its GenAI traces view else),
    with view=True in the sweep's shared view of its trials (trials_view)."""
    shared = f"&viewStateShareKey={tags.VIEW_KEY}" if view else ""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{shared}"


def report_url(uri: str, base: str, experiment_id: str) -> str | None:
    """The URL of the sweep run's report folder in the UI, or None while it has no report."""
    mlflow = client(uri)
    run_id = find_sweep_run(mlflow, experiment_id)
    if run_id is None or not retried(lambda: mlflow.list_artifacts(run_id, "report")):
        return None
    return run_url(base, experiment_id, run_id, "report")


def run_url(base: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A run's page in the MLflow UI's model-training view; with `artifact`, that artifact opened in its
    Artifacts tab."""
    page = f"artifacts/{artifact}" if artifact else ""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/{page}?workflowType=machine_learning"


@contextmanager
def _creating(path: Path | None):
    """Serialize the first use of a SQLite store among the processes of this machine (an exclusive lock on its
    folder): two drivers started together in an empty folder would otherwise both create MLflow's tables."""
    if path is None:
        yield
        return
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


@contextmanager
def _damage_named(path: Path | None):
    """MLflow's error on a damaged SQLite store, as one line (StoreError) that names the file."""
    try:
        yield
    except Exception as exc:
        if path is not None and is_damage(exc):
            raise damaged_store(path, str(exc).splitlines()[0][:200]) from None
        raise


def adopt_artifacts(path: Path) -> None:
    """A store folder that was copied or moved: point the artifact locations of its sweeps (MLflow records them
    as absolute file:// URIs, <folder>/mlartifacts/<sweep>) and of their runs at this folder's own mlartifacts/,
    for each sweep whose artifacts are here; otherwise a copy would read and write the original's files. The
    folder is the store file's real one: a store reached through a symbolic link keeps its artifacts where they
    are (re-pointing them at the link's folder lost them to every other user of the store)."""
    path = path.resolve()
    own = (path.parent / "mlartifacts").as_uri()
    db = sqlite3.connect(path, timeout=30)
    try:
        moved = [(exp_id, location, f"{own}/{rest}") for exp_id, location in
                 db.execute("SELECT experiment_id, artifact_location FROM experiments")
                 for prefix, sep, rest in [(location or "").partition("/mlartifacts/")]
                 if sep and prefix.startswith("file://") and f"{prefix}/mlartifacts" != own
                 and (path.parent / "mlartifacts" / rest).is_dir()]
        with db:
            for exp_id, old, new in moved:
                db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                           "AND substr(artifact_uri, 1, ?) = ?", (new, len(old) + 1, exp_id, len(old), old))
    finally:
        db.close()


def _experiment(mlflow: MlflowClient, sweep: str, artifacts: str | None) -> str:
    """The sweep's experiment id, created if missing; another driver creating it at the same moment (a unique
    violation on an MLflow server) is no error: its experiment is the sweep's."""
    exp_id = find_experiment_id(mlflow, sweep)
    if exp_id is not None:
        return exp_id
    try:
        return retried(lambda: mlflow.create_experiment(sweep, artifact_location=artifacts,
                                                        tags={tags.SWEEP: sweep, **EXPERIMENT_KIND}))
    except Exception:
        exp_id = find_experiment_id(mlflow, sweep)
        if exp_id is None:
            raise
        return exp_id


def find_sweep_run(mlflow: MlflowClient, exp_id: str) -> str | None:
    """The id of the sweep's run: its oldest active run of kind 'sweep' (None before the first driver)."""
    found = retried(lambda: mlflow.search_runs(
        [exp_id], filter_string=f"tags.`{tags.KIND}` = 'sweep'", run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1, order_by=["attributes.start_time ASC", "attributes.run_id ASC"]))
    return found[0].info.run_id if found else None


def _experiment_tags(mlflow: MlflowClient, exp_id: str, wanted: dict[str, str]) -> None:
    """Set the experiment's tags that differ from `wanted`. Two drivers may set one at the same moment: on a server
    the second insert can fail (a unique violation on PostgreSQL), which is no error when the tag now holds a value
    (the last writer's: both drivers of one sweep write the same view unless their command lines differ)."""
    stored = retried(lambda: mlflow.get_experiment(exp_id)).tags
    for key, value in wanted.items():
        if stored.get(key) == value:
            continue
        try:
            retried(lambda: mlflow.set_experiment_tag(exp_id, key, value))
        except Exception:
            if key not in retried(lambda: mlflow.get_experiment(exp_id)).tags:
                raise


def _sweep_run(mlflow: MlflowClient, exp_id: str, sweep: str, description: str, git: dict[str, str]) -> str:
    """The id of the sweep's run (find_sweep_run), created if missing; of two created at the same moment by two
    drivers, the younger is deleted."""
    run_id = find_sweep_run(mlflow, exp_id)
    if run_id is not None:
        return run_id
    run = retried(lambda: mlflow.create_run(exp_id, run_name=f"sweep {sweep}", tags={
        tags.SWEEP: sweep, tags.KIND: "sweep", tags.NOTE: description, **git}))
    # The sweep run is RUNNING only while a driver works on it (sweep_working / sweep_ended); FINISHED between.
    retried(lambda: mlflow.set_terminated(run.info.run_id, "FINISHED"))
    run_id = find_sweep_run(mlflow, exp_id)
    if run_id != run.info.run_id:
        retried(lambda: mlflow.delete_run(run.info.run_id))
    return run_id


def open_sweep(uri: str, sweep: str, description: str = "", view_params: list[str] | None = None,
               definition: dict[str, str] | None = None) -> SweepHandle:
    """Create (or find) the database, the sweep's experiment and its one run of kind 'sweep'; safe to call from
    several drivers at once. With view_params (the swept params), the experiment also gets its model-development
    kind and the trials view (trials_view); with `definition`, the sweep's run gets these tags (the sweep file
    that defines it: its path and sha256). The handle carries a new submission id (tracking/claims.py)."""
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path is not None:
        check_sqlite_store(path)
    with _creating(path), _damage_named(path):
        mlflow = client(uri)
        if path is not None:
            adopt_artifacts(path)
        artifacts = (path.resolve().parent / "mlartifacts" / sweep).as_uri() if path is not None else None
        exp_id = _experiment(mlflow, sweep, artifacts)
        if view_params is not None:
            _experiment_tags(mlflow, exp_id, {**EXPERIMENT_KIND, tags.VIEW_TAG: trials_view(view_params)})
        git = git_state()
        git = {**git, **source_tags(git)}
        run_id = _sweep_run(mlflow, exp_id, sweep, description, git)
        for key, value in (definition or {}).items():
            retried(lambda: mlflow.set_tag(run_id, key, value))
    return SweepHandle(uri=uri, experiment_id=exp_id, sweep_run_id=run_id, sweep=sweep, run_tags=git,
                       submission=uuid.uuid4().hex)


def log_sweep_files(handle: SweepHandle, files: list, artifact_path: str = "report") -> None:
    """Attach files (report figures, summaries) to the sweep's run, replacing earlier versions."""
    mlflow = client(handle.uri)
    for path in files:
        retried(lambda: mlflow.log_artifact(handle.sweep_run_id, str(path), artifact_path))


def log_sweep_metrics(handle: SweepHandle, metrics: dict[str, float]) -> None:
    """Metrics on the sweep's run (a refinement's brackets), in one write; NaN for an unknown value."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    for start in range(0, len(batch), 1000):  # MLflow's limit per log_batch
        retried(lambda: client(handle.uri).log_batch(handle.sweep_run_id, metrics=batch[start:start + 1000]))


def sweep_working(handle: SweepHandle) -> None:
    """Mark the sweep's run RUNNING while a driver runs its trials."""
    retried(lambda: client(handle.uri).update_run(handle.sweep_run_id, status="RUNNING"))


def sweep_ended(handle: SweepHandle, status: str, counts: dict[str, int]) -> None:
    """End the sweep's run (FINISHED, FAILED or KILLED) with the sweep's trial counts as metrics (trials_finished,
    trials_failed, trials_diverged, ...), so that the experiments table compares sweeps."""
    log_sweep_metrics(handle, {f"trials_{name}": count for name, count in counts.items()})
    retried(lambda: client(handle.uri).set_terminated(handle.sweep_run_id, status))
