"""Runs written through sgdlab's record stores (tracking/record_store.py) read back through MlflowClient exactly
like runs written by MlflowClient itself: info, params, tags, latest metrics and metric histories. On SQLite and
PostgreSQL with the tested mlflow they are written straight into the tables (tracking/run_writes.py); with any
other mlflow through the client, after one warning line."""

from __future__ import annotations

import math
import sqlite3
import os
import uuid

import pytest
from mlflow import __version__ as mlflow_version
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from sgdlab.tracking import record_store
from sgdlab.tracking.query import sweep_runs
from sgdlab.tracking.record_store import ClientStore, create_runs, store_for, update_runs
from sgdlab.tracking.datasets import dataset_record
from sgdlab.tracking.run_records import NewRun, RunUpdate
from sgdlab.tracking.store import client, open_sweep

TAGS = {"sgdlab.sweep": "w", "sgdlab.kind": "train", "sgdlab.trial_id": "t", "mlflow.parentRunId": "p"}
PARAMS = {"optim.lr": "0.1", "seed": "3", "model.note": "x" * 5000}
# Out-of-order steps, a repeated step, a repeated value, NaN and infinities: latest_metrics and is_nan must agree.
FIRST = [("loss", 1.0, 1000, 0), ("loss", 0.5, 1001, 10), ("loss", 0.5, 1001, 10), ("loss", 0.7, 1002, 5),
         ("error", float("nan"), 1000, 0), ("error", 0.25, 1003, 10), ("big", float("inf"), 1000, 0),
         ("small", float("-inf"), 1000, 3)]
SECOND = [("loss", 0.25, 1004, 20), ("error", 0.5, 999, 10), ("big", 2.0, 1000, 0), ("small", 1.0, 1005, 2)]
FIRST_TAGS = {"sgdlab.heartbeat": "1.0", "extra": "a"}
SECOND_TAGS = {"sgdlab.heartbeat": "2.0", "sgdlab.outcome": "converged"}
DATASET = dataset_record({"data": {"name": "digits_parity", "n_train": 64, "n_test": None, "batch_size": 8,
                                   "seed": 0}})


def _by_client(uri: str, experiment_id: str) -> str:
    mlflow = client(uri)
    run = mlflow.create_run(experiment_id, run_name="trial", tags=TAGS)
    run_id = run.info.run_id
    mlflow.log_batch(run_id, params=[Param(k, v) for k, v in PARAMS.items()])
    dataset = Dataset(DATASET.name, DATASET.digest, "code", DATASET.source, profile=DATASET.profile)
    mlflow.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
    mlflow.log_batch(run_id, metrics=[Metric(*m) for m in FIRST], tags=[RunTag(k, v) for k, v in FIRST_TAGS.items()])
    mlflow.log_batch(run_id, metrics=[Metric(*m) for m in SECOND], tags=[RunTag(k, v) for k, v in SECOND_TAGS.items()])
    mlflow.set_terminated(run_id, "FINISHED")
    return run_id


def _by_record_store(uri: str, experiment_id: str) -> str:
    ((run_id, _),) = create_runs(uri, experiment_id, [NewRun("trial", TAGS, PARAMS, DATASET, "train")])
    update_runs(uri, [RunUpdate(run_id, FIRST, FIRST_TAGS)])
    update_runs(uri, [RunUpdate(run_id, SECOND, SECOND_TAGS, "FINISHED")])
    return run_id


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(params=["sqlite", "postgresql"])
def store_uri(request, tmp_path):
    """A fresh store: a SQLite file, or a new database on the machine's PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    from sgdlab.tracking.server import drop_database, ensure_database

    admin = os.environ.get("SGDLAB_TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
    server = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    uri = f"{server}/sgdlab_writes_{uuid.uuid4().hex[:12]}"
    ensure_database(uri)
    try:
        yield uri
    finally:
        drop_database(uri)


def test_table_writes_read_back_like_client_writes(store_uri):
    tested = mlflow_version == record_store.TABLE_STORE_TESTED_MLFLOW
    assert type(store_for(store_uri)).__name__ == ("TableStore" if tested else "ClientStore")
    _assert_written_like_client(store_uri)


def test_untested_mlflow_writes_through_the_client_after_one_warning(store_uri, monkeypatch, capsys):
    monkeypatch.setattr(record_store, "TABLE_STORE_TESTED_MLFLOW", "0.0.1")
    record_store._warn_untested_mlflow.cache_clear()  # as in a fresh process
    capsys.readouterr()
    assert isinstance(store_for(store_uri), ClientStore)
    _assert_written_like_client(store_uri)
    handle = open_sweep(store_uri, "w")
    _by_record_store(store_uri, handle.experiment_id)  # more writes, no more warnings
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgdlab")]  # not MLflow's log
    assert ours == [
        f"sgdlab: warning: mlflow {mlflow_version} is not the tested 0.0.1; writing records through MlflowClient "
        "(slower)"]


def _assert_written_like_client(store_uri: str) -> None:
    handle = open_sweep(store_uri, "w")
    mlflow = client(store_uri)
    ref, ours = (mlflow.get_run(_by_client(store_uri, handle.experiment_id)),
                 mlflow.get_run(_by_record_store(store_uri, handle.experiment_id)))
    for field in ("status", "lifecycle_stage", "user_id", "run_name", "experiment_id"):
        assert getattr(ours.info, field) == getattr(ref.info, field), field
    assert ours.info.status == "FINISHED" and ours.info.end_time >= ours.info.start_time > 0
    assert ours.info.artifact_uri == ref.info.artifact_uri.replace(ref.info.run_id, ours.info.run_id)
    assert ours.data.params == ref.data.params == PARAMS
    assert ours.data.tags == ref.data.tags
    assert ours.data.tags["sgdlab.heartbeat"] == "2.0" and ours.data.tags["extra"] == "a"
    # One dataset record, shared by both runs (the UI's Dataset column and filter), with the context tag.
    (theirs_in,), (ours_in,) = ref.inputs.dataset_inputs, ours.inputs.dataset_inputs
    assert ours_in.dataset.to_dictionary() == theirs_in.dataset.to_dictionary()
    assert (ours_in.dataset.name, ours_in.dataset.digest) == ("digits_parity", DATASET.digest)
    assert [(t.key, t.value) for t in ours_in.tags] == [(t.key, t.value) for t in theirs_in.tags] == [
        ("mlflow.data.context", "train")]
    found = mlflow.search_runs([handle.experiment_id], f"dataset.digest = '{DATASET.digest}'")
    assert {r.info.run_id for r in found} >= {ref.info.run_id, ours.info.run_id}
    assert ours.data.metrics.keys() == ref.data.metrics.keys() == {"loss", "error", "big", "small"}
    for key in ref.data.metrics:
        assert _same(ours.data.metrics[key], ref.data.metrics[key]), key
        history = lambda run: sorted((m.step, m.timestamp, m.value) for m in mlflow.get_metric_history(  # noqa: E731
            run.info.run_id, key))
        pairs = list(zip(history(ours), history(ref), strict=True))
        assert all(a[:2] == b[:2] and _same(a[2], b[2]) for a, b in pairs), key
    assert ours.data.metrics["loss"] == 0.25 and ours.data.metrics["small"] == -1.7976931348623157e308  # by step
    # Found by MLflow's search and by sgdlab's own SQLite reader alike.
    found = mlflow.search_runs([handle.experiment_id], "tags.`sgdlab.outcome` = 'converged' and metrics.loss < 0.3")
    assert {r.info.run_id for r in found} == {ref.info.run_id, ours.info.run_id}
    records = {r.run_id: r for r in sweep_runs(store_uri, "w") if r.kind == "train"}  # SQLite: its own reader
    a, b = records[ours.info.run_id], records[ref.info.run_id]
    assert (a.status, a.params, a.tags.keys()) == (b.status, b.params, b.tags.keys())


def test_many_runs_in_one_write_and_their_ends(store_uri):
    handle = open_sweep(store_uri, "many")
    runs = [NewRun(f"m{i}", {**TAGS, "sgdlab.trial_id": f"t{i}"}, {"seed": str(i)}) for i in range(50)]
    created = create_runs(store_uri, handle.experiment_id, runs)
    assert len({run_id for run_id, _ in created}) == 50
    # Ends of several statuses, some runs with many values (more than one transaction), one run left running.
    updates = [RunUpdate(run_id, [("v", float(s), 1000 + s, s) for s in range(900 if i % 7 == 0 else 3)],
                         {"sgdlab.outcome": "error" if i % 2 else "converged"}, "FAILED" if i % 2 else "FINISHED")
               for i, (run_id, _) in enumerate(created[:-1])]
    update_runs(store_uri, updates)
    mlflow = client(store_uri)
    for i, (run_id, artifact_uri) in enumerate(created):
        run = mlflow.get_run(run_id)
        assert run.info.artifact_uri == artifact_uri and run.data.params == {"seed": str(i)}
        assert run.data.tags["mlflow.runName"] == f"m{i}" and run.data.tags["sgdlab.trial_id"] == f"t{i}"
        if i == 49:
            assert run.info.status == "RUNNING" and run.info.end_time is None and not run.data.metrics
            continue
        assert run.info.status == ("FAILED" if i % 2 else "FINISHED")
        steps = 900 if i % 7 == 0 else 3
        assert run.data.metrics == {"v": float(steps - 1)}
        assert len(mlflow.get_metric_history(run_id, "v")) == steps


def test_pack_endings_count_only_once_stored(tmp_path, monkeypatch):
    """Members ending together are ended in transactions, in order; a member's result (its `ended` callback) is
    given only once its end is committed, so a failed write leaves its run RUNNING for the job to fail."""
    from sgdlab.tracking import run_writes
    from sgdlab.tracking.writer import PackRuns, RunSpec

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "pack")
    monkeypatch.setattr(run_writes, "TRANSACTION_VALUES", 1)  # one member per transaction
    records = PackRuns(handle, [RunSpec(f"t{i}", {"seed": i}, 1, f"m{i}") for i in range(3)], heartbeat_s=15.0,
                       stale_after_s=120.0)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # a real failure of the store, on one member's write
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON metrics WHEN NEW.key = 'boom' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    ended = {}
    for i in range(3):
        records.log_metrics(i, 5, {"boom" if i == 2 else "loss": 0.5})
        records.finish(i, "converged", lambda status, reason, i=i: ended.__setitem__(i, status))
    with pytest.raises(Exception, match="refused by the test"):
        records.tick()
    assert ended == {0: "FINISHED", 1: "FINISHED"}
    mlflow = client(uri)
    assert [mlflow.get_run(r.run_id).info.status for r in records.runs] == ["FINISHED", "FINISHED", "RUNNING"]
    records.fail(2, RuntimeError("store refused the end"))
    run = mlflow.get_run(records.runs[2].run_id)
    assert run.info.status == "FAILED" and run.data.tags["sgdlab.error"] == "RuntimeError: store refused the end"


def test_a_packs_buffered_metrics_reach_the_store_every_flush_s(tmp_path):
    """Live progress: every member's buffered metrics are written once they are flush_s old, long before a
    buffer is full (MAX_BATCH values), and not before."""
    import time

    from sgdlab.tracking.writer import PackRuns, RunSpec

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records = PackRuns(open_sweep(uri, "pack"), [RunSpec(f"t{i}", {"seed": i}, 1, f"m{i}") for i in range(3)],
                       heartbeat_s=15.0, stale_after_s=120.0, flush_s=0.5)
    mlflow = client(uri)
    for i in range(3):
        records.log_metrics(i, 100, {"train_loss": 0.25 + i})
    records.tick()
    assert all(mlflow.get_run(r.run_id).data.metrics == {} for r in records.runs)  # not yet flush_s old
    time.sleep(0.6)
    records.tick()
    assert [mlflow.get_run(r.run_id).data.metrics for r in records.runs] == [
        {"train_loss": 0.25}, {"train_loss": 1.25}, {"train_loss": 2.25}]


def test_losing_the_dataset_insert_race_logs_the_inputs_again():
    """Two drivers on one server logging the same dataset at once: the loser's log_inputs fails on the dataset's
    key (seen in test_two_drivers_on_an_mlflow_server_on_postgresql) and is run again; other errors propagate."""
    from sgdlab.tracking.record_store import log_inputs_once_raced

    calls = []

    def raced():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique '
                               'constraint "dataset_pk"')

    log_inputs_once_raced(raced)
    assert len(calls) == 2

    def broken():
        raise RuntimeError("RESOURCE_DOES_NOT_EXIST: run gone")

    with pytest.raises(RuntimeError, match="run gone"):
        log_inputs_once_raced(broken)
