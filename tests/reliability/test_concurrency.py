"""Many small trials writing to one SQLite store at once: no lock error, nothing lost, nothing doubled."""

import sqlite3
import threading
import time

import pytest

from sgdlab.tracking.location import retried
from sgdlab.tracking.store import open_sweep
from sgdlab.tracking.writer import TrialRun

from conftest import mlflow_runs, run_sgdlab, status_json

MANY = """
overrides: [model.depth=1, model.width=4, data.n_train=32, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=30, train.log_every=10, train.checkpoint_every=10]
axes:
  seed: range(200)
"""


@pytest.mark.slow
def test_200_trials_on_sqlite_all_finish_once(sweeps_dir, tmp_path, shared_ray):
    (sweeps_dir / "many.yaml").write_text(MANY)
    out = run_sgdlab("sweep", "many", "cluster.num_cpus=2", "resources.max_in_flight=8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "200 finished" in out.stderr and "locked" not in out.stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "many")
    assert len(runs) == 200 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sgdlab.trial_id"] for r in runs}) == 200
    assert status_json(tmp_path, "many")["counts"]["finished"] == 200


def test_retried_retries_only_transient_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retried(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        retried(lambda: (_ for _ in ()).throw(ValueError("a real error")))


def test_an_error_still_transient_after_the_last_try_is_one_line_naming_sqlites_code(monkeypatch):
    """A driver died with a traceback on `sqlite3.OperationalError: disk I/O error` after ~40 s of retries
    (bench/store_load_bench.py); it is now a StoreError, which commands print as one line, with SQLite's extended
    error name for the next diagnosis."""
    import sqlite3

    from sgdlab.tracking import location

    monkeypatch.setattr(location.time, "sleep", lambda s: None)
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorname = "SQLITE_IOERR_SHORT_READ"
    calls = []

    def failing():
        calls.append(1)
        raise error

    with pytest.raises(location.StoreError, match=r"^the store kept answering 'disk I/O error' "
                                                  r"\(SQLITE_IOERR_SHORT_READ\) through 12 tries over \d+ s$"):
        retried(failing)
    assert len(calls) == 12


@pytest.mark.slow
def test_a_write_waits_out_a_lock_held_longer_than_sqlites_timeout(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "locked")
    run = TrialRun.start(handle, "t0", {"seed": 0}, attempt=1, run_name="t0")
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(7.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    run.log_metrics(1, {"train_loss": 0.5})
    run.finish("converged")  # flushes through the lock once it is released
    assert time.monotonic() - started >= 6.5
    release.join()
    holder.close()
    _, (record,) = mlflow_runs(tmp_path / "mlflow.db", "locked")
    assert record.info.status == "FINISHED" and record.data.metrics["train_loss"] == 0.5
