"""The table store: run records written straight into a SQLite or PostgreSQL store's tables through MLflow's own
table models (mlflow.store.tracking.dbmodels), every call in one transaction, whatever the number of runs.

MLflow's client writes one run per call, about 50 SQL statements over a trial's life, and that costs more than the
training of a tiny trial; a pack of 100 tiny trials writes its records in a handful of transactions instead. The
rows are the ones the client writes: runs (status, times, artifact_uri), tags (with mlflow.runName), params,
metrics (NaN as 0 with is_nan, infinities as the largest float), latest_metrics (the newest by step, timestamp,
value) and dataset inputs (datasets, inputs, input_tags). A test reads them back through MlflowClient and compares
them with runs written by the client; since the table models are MLflow's internals, tracking/record_store.py
uses this store only with the mlflow version that test passed with.

Every call is retried on a transient lock as a whole: a failed transaction leaves nothing behind.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from functools import lru_cache

from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
from mlflow.store.tracking.dbmodels.models import (SqlDataset, SqlExperiment, SqlInput, SqlInputTag, SqlLatestMetric,
                                                  SqlMetric, SqlParam, SqlRun, SqlTag)
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from sgdlab.tracking import tags
from sgdlab.tracking.datasets import CONTEXT_TAG, SOURCE_TYPE
from sgdlab.tracking.location import retried
from sgdlab.tracking.run_records import NewRun, RunUpdate

TRANSACTION_VALUES = 20_000  # metric values per transaction: keeps a SQLite store's write lock short
ENDED = ("FINISHED", "FAILED", "KILLED")


def _now_ms() -> int:
    return int(time.time() * 1000)


@lru_cache(maxsize=4)
def _engine(uri: str):
    return create_sqlalchemy_engine_with_retry(uri)


class TableStore:
    """Records written into the tables of a SQLite or PostgreSQL store, one transaction per call (a RecordStore)."""

    def __init__(self, uri: str):
        self.uri = uri

    def create_runs(self, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
        return retried(lambda: _database_create(self.uri, experiment_id, runs))

    def batches(self, updates: list[RunUpdate]) -> list[list[RunUpdate]]:
        """Consecutive updates grouped into transactions of at most TRANSACTION_VALUES metric values (or one
        update)."""
        parts, values = [[]], 0
        for one in updates:
            if parts[-1] and values + len(one.metrics) > TRANSACTION_VALUES:
                parts.append([])
                values = 0
            parts[-1].append(one)
            values += len(one.metrics)
        return [part for part in parts if part]

    def write_batch(self, batch: list[RunUpdate]) -> None:
        retried(lambda: _database_update(self.uri, batch))


def _database_create(uri: str, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
    now, created, run_rows, tag_rows, param_rows = _now_ms(), [], [], [], []
    with Session(_engine(uri)) as session, session.begin():
        location = session.scalar(select(SqlExperiment.artifact_location).where(
            SqlExperiment.experiment_id == int(experiment_id)))
        for run in runs:
            run_id = uuid.uuid4().hex
            artifact_uri = append_to_uri_path(location, run_id, "artifacts")
            created.append((run_id, artifact_uri))
            # user_id from the mlflow.user tag, as MlflowClient.create_run sets it
            run_rows.append({"run_uuid": run_id, "name": run.run_name, "source_type": "UNKNOWN", "source_name": "",
                             "entry_point_name": "", "user_id": run.tags.get("mlflow.user", "unknown"),
                             "status": "RUNNING", "start_time": now,
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
        _insert_inputs(session, int(experiment_id), [(run_id, run) for (run_id, _), run in zip(created, runs)])
    return created


def _insert_inputs(session: Session, experiment_id: int, runs: list[tuple[str, NewRun]]) -> None:
    """The runs' dataset inputs as MLflow's log_inputs writes them: a datasets row per (experiment, name, digest),
    shared by every run that uses it (inserted unless present: another writer may add it at the same moment), an
    inputs row from the dataset to each run and its context tag."""
    datasets = {(run.dataset.name, run.dataset.digest): run.dataset for _, run in runs if run.dataset is not None}
    if not datasets:
        return
    upsert = (sqlite_insert if session.bind.dialect.name == "sqlite" else postgresql_insert)(SqlDataset.__table__)
    session.execute(upsert.on_conflict_do_nothing(), [
        {"dataset_uuid": uuid.uuid4().hex, "experiment_id": experiment_id, "name": d.name, "digest": d.digest,
         "dataset_source_type": SOURCE_TYPE, "dataset_source": d.source, "dataset_schema": None,
         "dataset_profile": d.profile} for d in datasets.values()])
    stored = {(row.name, row.digest): row.dataset_uuid for row in session.execute(
        select(SqlDataset.name, SqlDataset.digest, SqlDataset.dataset_uuid).where(
            SqlDataset.experiment_id == experiment_id, SqlDataset.name.in_({n for n, _ in datasets})))}
    input_rows, input_tags = [], []
    for run_id, run in runs:
        if run.dataset is not None:
            input_uuid = uuid.uuid4().hex
            input_rows.append({"input_uuid": input_uuid, "source_type": "DATASET", "destination_type": "RUN",
                               "source_id": stored[(run.dataset.name, run.dataset.digest)],
                               "destination_id": run_id})
            input_tags.append({"input_uuid": input_uuid, "name": CONTEXT_TAG, "value": run.context})
    session.execute(insert(SqlInput.__table__), input_rows)
    session.execute(insert(SqlInputTag.__table__), input_tags)


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
