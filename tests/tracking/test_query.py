"""Reading a SQLite store (tracking/query.py) while MLflow is still creating it."""

import sqlite3

from sgdlab.tracking.histories import metric_histories, metric_points
from sgdlab.tracking.query import ended_since, sweep_runs, trial_records


def test_a_store_being_created_reads_as_empty(tmp_path):
    """MLflow creates its tables one migration after another: a reader that polls the store meanwhile (a test,
    `sgdlab status` in another terminal) sees no runs instead of 'no such table'."""
    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
    uri = f"sqlite:///{path}"
    assert sweep_runs(uri, "s") == [] and ended_since(uri, "s", 0) == {}
    assert trial_records(uri, "1", ["t"]) == {"t": []}
    assert metric_histories(uri, ["r"], ["train_loss"]) == {"r": {"train_loss": []}}
    assert metric_points(uri, "r") == []
