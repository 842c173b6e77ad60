"""One trial attempt's MLflow run, written from the worker that runs it.

The run is created RUNNING (tags, flattened config as params, config.yaml artifact); metrics are buffered and
written with log_batch when the heartbeat is due or the buffer holds 900 values, so that a trial costs a few
database writes however often it logs; every write refreshes `sgdlab.heartbeat`. A packed member's run has no
heartbeat of its own (heartbeat_s=None): its pack refreshes one member's run for all (tag `sgdlab.pack`). The run
ends FINISHED with an outcome, or FAILED with a one-line `sgdlab.error` and a `traceback.txt` artifact.
"""

from __future__ import annotations

import socket
import tempfile
import time
import traceback
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from sgdlab.tracking import tags
from sgdlab.tracking.location import retried
from sgdlab.tracking.store import SweepHandle, client

MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
MAX_PARAM_CHARS = 6000


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialRun:
    def __init__(self, handle: SweepHandle, trial_id: str, config: dict, *, attempt: int, run_name: str,
                 kind: str = "train", extra_tags: dict[str, str] | None = None, heartbeat_s: float | None = 15.0):
        self.mlflow = client(handle.uri)
        self.handle, self.trial_id, self.kind = handle, trial_id, kind
        self.heartbeat_s = heartbeat_s
        self.buffer: list[Metric] = []
        run_tags = {tags.SWEEP: handle.sweep, tags.TRIAL_ID: trial_id, tags.KIND: kind, tags.ATTEMPT: str(attempt),
                    tags.PARENT: handle.sweep_run_id, tags.NODE: socket.gethostname(),
                    tags.HEARTBEAT: f"{time.time():.3f}", **handle.run_tags, **(extra_tags or {})}
        run = retried(lambda: self.mlflow.create_run(handle.experiment_id, run_name=run_name, tags=run_tags))
        self.run_id = run.info.run_id
        # Artifacts go straight to the run's artifact location (MlflowClient would first read the run back).
        self.artifacts = get_artifact_repository(run.info.artifact_uri, tracking_uri=handle.uri)
        self.last_write = time.monotonic()
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in tags.flatten(config).items()]
        for i in range(0, len(params), 100):
            retried(lambda chunk=params[i:i + 100]: self.mlflow.log_batch(self.run_id, params=chunk))
        self.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.buffer) >= MAX_BATCH or self.beat_due():
            self.flush()

    def beat_due(self) -> bool:
        return self.heartbeat_s is not None and time.monotonic() - self.last_write >= self.heartbeat_s

    def beat(self) -> None:
        """Refresh the heartbeat if it is due (cheap to call every step)."""
        if self.beat_due():
            self.flush()

    def flush(self, extra_tags: dict[str, str] | None = None) -> None:
        beat = [RunTag(tags.HEARTBEAT, f"{time.time():.3f}")]
        beat += [RunTag(k, v) for k, v in (extra_tags or {}).items()]
        while True:
            chunk, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
            retried(lambda: self.mlflow.log_batch(self.run_id, metrics=chunk, tags=beat))
            if not self.buffer:
                break
        self.last_write = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.log_bytes(text.encode(), artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Write bytes as an artifact (for example a checkpoint), replacing an earlier one of the same name."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            retried(lambda: self.artifacts.log_artifact(str(path), folder or None))

    def finish(self, outcome: str, check_duplicates: bool = True) -> str:
        """End FINISHED with an outcome; returns the status written.

        A trial never has two FINISHED runs: if another run of it finished meanwhile (a run thought lost came
        back), this one ends KILLED with the reason instead. The caller may skip that query when the trial had
        no other run when this one started."""
        others = [r for r in trial_runs(self.handle, self.trial_id, self.kind)
                  if r.info.status == "FINISHED" and r.info.run_id != self.run_id] if check_duplicates else []
        if others:
            error = f"duplicate: trial already finished by run {others[0].info.run_id}"
            self.flush({tags.OUTCOME: outcome, tags.ERROR: error})
            retried(lambda: self.mlflow.set_terminated(self.run_id, "KILLED"))
            return "KILLED"
        self.flush({tags.OUTCOME: outcome})
        retried(lambda: self.mlflow.set_terminated(self.run_id, "FINISHED"))
        return "FINISHED"

    def fail(self, exc: BaseException) -> str:
        """Record an exception: FAILED, one-line error tag, traceback artifact. Returns the one-line error."""
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        tb = "".join(traceback.format_exception(exc))
        try:
            self.log_text(tb, "traceback.txt")
            self.flush({tags.OUTCOME: "error", tags.ERROR: line})
        finally:
            retried(lambda: self.mlflow.set_terminated(self.run_id, "FAILED"))
        return line


def trial_runs(handle: SweepHandle, trial_id: str, kind: str = "train") -> list:
    """MLflow runs of one trial (all attempts), oldest first."""
    mlflow = client(handle.uri)
    flt = f"tags.`{tags.TRIAL_ID}` = '{trial_id}' and tags.`{tags.KIND}` = '{kind}'"
    return list(retried(lambda: mlflow.search_runs([handle.experiment_id], filter_string=flt,
                                                   order_by=["attributes.start_time ASC"])))


def end_runs(handle: SweepHandle, run_ids: list[str], status: str, error: str) -> None:
    """End runs whose worker cannot end them (it died, or the driver was interrupted) with a one-line reason."""
    mlflow = client(handle.uri)
    for run_id in run_ids:
        retried(lambda: mlflow.log_batch(run_id, tags=[RunTag(tags.OUTCOME, "error"), RunTag(tags.ERROR, error[:500])]))
        retried(lambda: mlflow.set_terminated(run_id, status))


def end_running(handle: SweepHandle, trial_id: str, status: str, error: str, kind: str = "train") -> list[str]:
    """End the RUNNING runs of a trial (of one kind); returns their ids."""
    ids = [r.info.run_id for r in trial_runs(handle, trial_id, kind) if r.info.status == "RUNNING"]
    end_runs(handle, ids, status, error)
    return ids
