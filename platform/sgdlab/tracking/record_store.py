"""Writes of run records, many runs per call: create runs (tags, params) and update them (metrics, tags, an end
status), through one of two record stores.

The client store writes through MLflow's public client API (MlflowClient.create_run, log_batch, set_terminated),
one run per call: it works on any store MLflow serves (an `mlflow server` over http, a database) and any mlflow
3.x that pyproject.toml admits. The table store (tracking/run_writes.py) writes straight into MLflow's tables, many
runs per transaction: the fast path on SQLite and PostgreSQL stores, but it relies on MLflow's internal table
models, so it is used only with the mlflow version it was tested against (TABLE_STORE_TESTED_MLFLOW). With any
other version a database store is written through the client, after one warning line per process on stderr.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from sgdlab.tracking.datasets import CONTEXT_TAG, SOURCE_TYPE
from sgdlab.tracking.location import retried
from sgdlab.tracking.run_records import NewRun, RecordStore, RunUpdate
from sgdlab.tracking.store import client

TABLE_STORE_TESTED_MLFLOW = "3.17.2"  # tests/tracking/test_run_writes.py compares its rows with the client's
TABLE_STORE_SCHEMES = ("sqlite", "postgresql")  # the databases that test runs on
CLIENT_PARAMS = 100  # MLflow accepts at most 100 params per log_batch
CLIENT_METRICS = 900  # and at most 1000 metrics


class ClientStore:
    """Records written through MlflowClient, one run per call (each call retried on a transient lock)."""

    def __init__(self, uri: str):
        self.client = client(uri)

    def create_runs(self, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
        return [self._create(experiment_id, run) for run in runs]

    def _create(self, experiment_id: str, run: NewRun) -> tuple[str, str]:
        created = retried(lambda: self.client.create_run(experiment_id, run_name=run.run_name, tags=run.tags))
        params = [Param(k, v) for k, v in run.params.items()]
        for i in range(0, len(params), CLIENT_PARAMS):
            chunk = params[i:i + CLIENT_PARAMS]
            retried(lambda: self.client.log_batch(created.info.run_id, params=chunk))
        if run.dataset is not None:
            d = run.dataset
            dataset = Dataset(d.name, d.digest, SOURCE_TYPE, d.source, profile=d.profile)
            inputs = [DatasetInput(dataset, [InputTag(CONTEXT_TAG, run.context)])]
            log_inputs_once_raced(lambda: self.client.log_inputs(created.info.run_id, datasets=inputs))
        return created.info.run_id, created.info.artifact_uri

    def batches(self, updates: list[RunUpdate]) -> list[list[RunUpdate]]:
        return [[one] for one in updates]

    def write_batch(self, batch: list[RunUpdate]) -> None:
        for one in batch:
            self._update(one)

    def _update(self, one: RunUpdate) -> None:
        run_tags = [RunTag(k, v) for k, v in one.tags.items()]
        chunks = [one.metrics[i:i + CLIENT_METRICS] for i in range(0, len(one.metrics), CLIENT_METRICS)]
        for n, chunk in enumerate(chunks or ([[]] if run_tags else [])):  # the tags go with the first chunk
            retried(lambda: self.client.log_batch(one.run_id, metrics=[Metric(*m) for m in chunk],
                                                  tags=run_tags if n == 0 else []))
        if one.status is not None:
            retried(lambda: self.client.set_terminated(one.run_id, one.status))


@functools.cache
def _warn_untested_mlflow() -> None:
    """One line on stderr, once per process."""
    print(f"sgdlab: warning: mlflow {mlflow.__version__} is not the tested {TABLE_STORE_TESTED_MLFLOW}; "
          "writing records through MlflowClient (slower)", file=sys.stderr, flush=True)


def store_for(uri: str) -> RecordStore:
    """The table store on a SQLite or PostgreSQL URI while mlflow is the version it was tested against; the client
    store on any other URI, and (after the warning) on those too with any other mlflow."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in TABLE_STORE_SCHEMES:
        return ClientStore(uri)
    if mlflow.__version__ != TABLE_STORE_TESTED_MLFLOW:
        _warn_untested_mlflow()
        return ClientStore(uri)
    from sgdlab.tracking.run_writes import TableStore  # MLflow internals: imported only for the tested version

    return TableStore(uri)


def create_runs(uri: str, experiment_id: str, runs: list[NewRun]) -> list[tuple[str, str]]:
    """Create RUNNING runs in the experiment; returns (run_id, artifact_uri) for each, in order."""
    if not runs:
        return []
    return store_for(uri).create_runs(experiment_id, runs)


def update_runs(uri: str, updates: list[RunUpdate],
                written: Callable[[list[RunUpdate]], None] = lambda part: None) -> None:
    """Add metrics, set tags (replacing values) and end runs, in order, in the store's batches (several
    transactions for a large update on the table store, one run at a time on the client store); `written(part)`
    runs after each batch is stored."""
    store = store_for(uri)
    for part in store.batches(updates):
        store.write_batch(part)
        written(part)


# Two drivers whose first runs log the same dataset at once race on its insert in the server's store: the loser's
# transaction fails on the dataset's key (PostgreSQL, SQLite) and is rolled back.
DATASET_RACE = ('"dataset_pk"', "UNIQUE constraint failed: datasets")


def log_inputs_once_raced(call) -> None:
    """log_inputs, retried (locks) and run again once after losing the dataset insert race: the second call finds
    the dataset the other driver inserted and only links it to the run."""
    try:
        retried(call)
    except Exception as exc:  # MlflowException / RestException carrying the store's error
        if not any(s in str(exc) for s in DATASET_RACE):
            raise
        retried(call)
