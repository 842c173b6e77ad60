"""Writes of run records, many runs per call: create runs (tags, params) and update them (metrics, tags, an end
status).

A database store (sqlite, postgresql, mysql, mssql URIs) is written straight through MLflow's own table models
(mlflow.store.tracking.dbmodels), every call in one transaction, whatever the number of runs. MLflow's client
writes one run per call, about 50 SQL statements over a trial's life, and that costs more than the training of a
tiny trial; a pack of 100 tiny trials writes its records in a handful of transactions instead. The rows are the
ones the client writes: runs (status, times, artifact_uri), tags (with mlflow.runName), params, metrics (NaN as
0 with is_nan, infinities as the largest float) and latest_metrics (the newest by step, timestamp, value). A test
reads them back through MlflowClient and compares them with runs written by the client. Any other store (an
`mlflow server` over http) is written through MlflowClient, one run at a time.

Every call is retried on a transient lock as a whole: a failed transaction leaves nothing behind.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from sgdlab.tracking import tags
from sgdlab.tracking.location import retried
from sgdlab.tracking.store import client

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
CLIENT_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
TRANSACTION_VALUES = 20_000  # metric values per transaction: keeps a SQLite store's write lock short
ENDED = ("FINISHED", "FAILED", "KILLED")


@dataclass
class NewRun:
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]


@dataclass
class RunUpdate:
    run_id: str
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, timestamp (ms), step
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None  # FINISHED, FAILED or KILLED ends the run (end_time: now)


def _now_ms() -> int:
    return int(time.time() * 1000)


def is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES


@lru_cache(maxsize=4)
def _engine(uri: str):
    return create_sqlalchemy_engine_with_retry(uri)


def create_runs(uri: str, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
    """Create RUNNING runs in the experiment; returns (run_id, artifact_uri) for each, in order."""
    if not runs:
        return []
    if not is_database(uri):
        return [_client_create(uri, experiment_id, run) for run in runs]
    return retried(lambda: _database_create(uri, experiment_id, runs))


def update_runs(uri: str, updates: list[RunUpdate],
                written: Callable[[list[RunUpdate]], None] = lambda part: None) -> None:
    """Add metrics, set tags (replacing values) and end runs. Large updates take several transactions, in order;
    `written(part)` runs after each part is committed (one run at a time on a client store)."""
    if is_database(uri):
        write, parts = (lambda part: retried(lambda: _database_update(uri, part))), _transactions(updates)
    else:
        write, parts = (lambda part: _client_update(uri, part[0])), [[one] for one in updates]
    for part in parts:
        write(part)
        written(part)


def _transactions(updates: list[RunUpdate]) -> list[list[RunUpdate]]:
    """Consecutive updates grouped into transactions of at most TRANSACTION_VALUES metric values (or one update)."""
    parts, values = [[]], 0
    for one in updates:
        if parts[-1] and values + len(one.metrics) > TRANSACTION_VALUES:
            parts.append([])
            values = 0
        parts[-1].append(one)
        values += len(one.metrics)
    return [part for part in parts if part]


def _client_create(uri: str, experiment_id: str, run: NewRun) -> tuple[str, str]:
    mlflow = client(uri)
    created = retried(lambda: mlflow.create_run(experiment_id, run_name=run.run_name, tags=run.tags))
    params = [Param(k, v) for k, v in run.params.items()]
    for i in range(0, len(params), 100):
        retried(lambda chunk=params[i:i + 100]: mlflow.log_batch(created.info.run_id, params=chunk))
    return created.info.run_id, created.info.artifact_uri


def _client_update(uri: str, one: RunUpdate) -> None:
    mlflow = client(uri)
    run_tags = [RunTag(k, v) for k, v in one.tags.items()]
    chunks = [one.metrics[i:i + CLIENT_BATCH] for i in range(0, len(one.metrics), CLIENT_BATCH)]
    for n, chunk in enumerate(chunks or ([[]] if run_tags else [])):  # the tags go with the first chunk
        retried(lambda: mlflow.log_batch(one.run_id, metrics=[Metric(*m) for m in chunk],
                                         tags=run_tags if n == 0 else []))
    if one.status is not None:
        retried(lambda: mlflow.set_terminated(one.run_id, one.status))


def _database_create(uri: str, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
    now, created, run_rows, tag_rows, param_rows = _now_ms(), [], [], [], []
    with Session(_engine(uri)) as session, session.begin():
        location = session.scalar(select(SqlExperiment.artifact_location).where(
            SqlExperiment.experiment_id == int(experiment_id)))
        for run in runs:
            run_id = uuid.uuid4().hex
            artifact_uri = append_to_uri_path(location, run_id, "artifacts")
            created.append((run_id, artifact_uri))
            run_rows.append({"run_uuid": run_id, "name": run.run_name, "source_type": "UNKNOWN", "source_name": "",
                             "entry_point_name": "", "user_id": "unknown", "status": "RUNNING", "start_time": now,
                             "end_time": None, "deleted_time": None, "source_version": "",
                             "lifecycle_stage": "active", "artifact_uri": artifact_uri,
                             "experiment_id": int(experiment_id)})
            run_tags = {**run.tags, tags.RUN_NAME: run.run_name}
            tag_rows += [{"run_uuid": run_id, "key": k, "value": v} for k, v in run_tags.items()]
            param_rows += [{"run_uuid": run_id, "key": k, "value": v} for k, v in run.params.items()]
        session.execute(insert(SqlRun.__table__), run_rows)
        session.execute(insert(SqlTag.__table__), tag_rows)
        if param_rows:
            session.execute(insert(SqlParam.__table__), param_rows)
    return created


def _stored(value: float) -> tuple[bool, float]:
    """(is_nan, value) as MLflow stores a metric value: NaN as 0 with is_nan, infinities as +-max float."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(1.7976931348623157e308, value)
    return False, value


def _database_update(uri: str, updates: list[RunUpdate]) -> None:
    metric_rows, newest = [], {}
    for one in updates:
        seen = set()
        for name, raw, timestamp, step in one.metrics:
            is_nan, value = _stored(float(raw))
            identity = (name, int(timestamp), int(step), value, is_nan)
            if identity in seen:  # MLflow drops repeated values within one write
                continue
            seen.add(identity)
            row = {"run_uuid": one.run_id, "key": name, "value": value, "timestamp": int(timestamp),
                   "step": int(step), "is_nan": is_nan}
            metric_rows.append(row)
            key = (one.run_id, name)
            if key not in newest or _order(row) > _order(newest[key]):
                newest[key] = row
    with Session(_engine(uri)) as session, session.begin():
        if metric_rows:
            session.execute(insert(SqlMetric.__table__), metric_rows)
            _update_latest(session, newest)
        by_keys = defaultdict(list)  # tags replace earlier values: delete, then insert
        for one in updates:
            if one.tags:
                by_keys[tuple(sorted(one.tags))].append(one.run_id)
        for keys, run_ids in by_keys.items():
            session.execute(delete(SqlTag).where(SqlTag.run_uuid.in_(run_ids), SqlTag.key.in_(keys)))
        tag_rows = [{"run_uuid": one.run_id, "key": k, "value": v} for one in updates for k, v in one.tags.items()]
        if tag_rows:
            session.execute(insert(SqlTag.__table__), tag_rows)
        by_status = defaultdict(list)
        for one in updates:
            if one.status is not None:
                by_status[one.status].append(one.run_id)
        for status, run_ids in by_status.items():
            assert status in ENDED, status
            session.execute(update(SqlRun).where(SqlRun.run_uuid.in_(run_ids)).values(
                status=status, end_time=_now_ms()))


def _order(row: dict) -> tuple:
    return row["step"], row["timestamp"], row["value"]


def _update_latest(session: Session, newest: dict[tuple[str, str], dict]) -> None:
    """latest_metrics holds each run's newest value of each key (by step, then timestamp, then value)."""
    run_ids = sorted({run_id for run_id, _ in newest})
    stored = {}
    for i in range(0, len(run_ids), 500):
        for row in session.execute(select(SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.step,
                                          SqlLatestMetric.timestamp, SqlLatestMetric.value).where(
                SqlLatestMetric.run_uuid.in_(run_ids[i:i + 500]))):
            stored[(row.run_uuid, row.key)] = (row.step, row.timestamp, row.value)
    fresh = [row for key, row in newest.items() if key not in stored]
    newer = [row for key, row in newest.items() if key in stored and _order(row) > stored[key]]
    if fresh:
        session.execute(insert(SqlLatestMetric.__table__), fresh)
    if newer:
        session.execute(update(SqlLatestMetric), newer)
