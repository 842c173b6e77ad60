"""Metric histories of runs: every logged value, for the report's curves and for a resumed attempt's copy of
the history it continues. A SQLite store is read directly and read-only from MLflow's `metrics` table; any other
store with MlflowClient.get_metric_history."""

from __future__ import annotations

from sgdlab.tracking.location import retried, sqlite_path
from sgdlab.tracking.query import read_only

History = list[tuple[int, float]]  # (step, value), in the order of step (then of logging time)


def _sqlite_histories(path, run_ids: list[str], keys: list[str]) -> dict[str, dict[str, History]]:
    out: dict[str, dict[str, list]] = {run_id: {key: [] for key in keys} for run_id in run_ids}
    with read_only(path) as db:
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


Point = tuple[str, float, int, int]  # key, value, timestamp (ms), step: a metric value as MLflow stores it


def metric_points(uri: str, run_id: str) -> list[Point]:
    """Every metric value a run logged, of every key, as stored (NaN as NaN), ordered by key, step, timestamp:
    what a resumed attempt copies into its own run."""
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            return []

        def read() -> list[Point]:
            with read_only(path) as db:
                return [] if db is None else [
                    (key, float("nan") if is_nan else float(value), int(ts), int(step))
                    for key, value, ts, step, is_nan in db.execute(
                        "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ? "
                        "ORDER BY key, step, timestamp", (run_id,))]

        return retried(read)
    from sgdlab.tracking.store import client

    mlflow = client(uri)
    keys = retried(lambda: mlflow.get_run(run_id)).data.metrics
    return sorted(((m.key, float(m.value), int(m.timestamp), int(m.step)) for key in keys
                   for m in retried(lambda: mlflow.get_metric_history(run_id, key))), key=lambda p: (p[0], p[3], p[2]))
