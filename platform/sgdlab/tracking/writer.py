"""One trial attempt's MLflow run, written from the worker that runs it.

The run is created RUNNING (tags, flattened config as params, config.yaml artifact); metrics are buffered and
written with log_batch when the heartbeat is due or the buffer holds 900 values, so that a trial costs a few
database writes however often it logs; every write refreshes `sgdlab.heartbeat`. The run ends FINISHED with an
outcome, or FAILED with a one-line `sgdlab.error` and a `traceback.txt` artifact.
"""

from __future__ import annotations

import socket
import time
import traceback

import yaml
from mlflow.entities import Metric, Param, RunTag

from sgdlab.tracking import tags
from sgdlab.tracking.location import retried
from sgdlab.tracking.store import SweepHandle, client

MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
MAX_PARAM_CHARS = 6000


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialRun:
    def __init__(self, handle: SweepHandle, trial_id: str, config: dict, *, attempt: int, run_name: str,
                 kind: str = "train", extra_tags: dict[str, str] | None = None, heartbeat_s: float = 15.0):
        self.mlflow = client(handle.uri)
        self.heartbeat_s = heartbeat_s
        self.buffer: list[Metric] = []
        run_tags = {tags.SWEEP: handle.sweep, tags.TRIAL_ID: trial_id, tags.KIND: kind, tags.ATTEMPT: str(attempt),
                    tags.PARENT: handle.sweep_run_id, tags.NODE: socket.gethostname(),
                    tags.HEARTBEAT: f"{time.time():.3f}", **handle.run_tags, **(extra_tags or {})}
        run = retried(lambda: self.mlflow.create_run(handle.experiment_id, run_name=run_name, tags=run_tags))
        self.run_id = run.info.run_id
        self.last_write = time.monotonic()
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in tags.flatten(config).items()]
        for i in range(0, len(params), 100):
            retried(lambda chunk=params[i:i + 100]: self.mlflow.log_batch(self.run_id, params=chunk))
        self.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.buffer) >= MAX_BATCH or time.monotonic() - self.last_write >= self.heartbeat_s:
            self.flush()

    def beat(self) -> None:
        """Refresh the heartbeat if it is due (cheap to call every step)."""
        if time.monotonic() - self.last_write >= self.heartbeat_s:
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
        retried(lambda: self.mlflow.log_text(self.run_id, text, artifact_file))

    def finish(self, outcome: str) -> None:
        self.flush({tags.OUTCOME: outcome})
        retried(lambda: self.mlflow.set_terminated(self.run_id, "FINISHED"))

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


def fail_orphans(handle: SweepHandle, trial_id: str, error: str) -> int:
    """Mark RUNNING runs of a trial FAILED with `error` (their worker died without recording it)."""
    mlflow = client(handle.uri)
    runs = retried(lambda: mlflow.search_runs(
        [handle.experiment_id],
        filter_string=f"tags.`{tags.TRIAL_ID}` = '{trial_id}' and attributes.status = 'RUNNING'"))
    for run in runs:
        retried(lambda: mlflow.log_batch(run.info.run_id, tags=[RunTag(tags.OUTCOME, "error"),
                                                                RunTag(tags.ERROR, error[:500])]))
        retried(lambda: mlflow.set_terminated(run.info.run_id, "FAILED"))
    return len(runs)
