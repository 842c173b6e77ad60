"""One trial attempt's MLflow run, written from the worker that runs it; the runs of a pack, written together.

A run is created RUNNING (tags, flattened config as params, config.yaml artifact); metrics are buffered and
written when the heartbeat is due or the buffer holds MAX_BATCH values, so that a trial costs a few database
writes however often it logs; every write refreshes `sgdlab.heartbeat`. The run ends FINISHED with an outcome, or
FAILED with a one-line `sgdlab.error` and a `traceback.txt` artifact. Before it ends FINISHED, a run checks that it
still holds its trial (tracking/claims.py, rule 3); if not, it ends KILLED with outcome 'duplicate'.

A pack's runs (PackRuns) are created in one write, their metrics are written for all members at once, one member's
run carries the pack's heartbeat (tag `sgdlab.pack`), and the members that stop between two steps of the pack end in
one write, after one read of their trials' runs for the claim check: on a database store a pack of tiny trials
costs a few transactions instead of a few per member (tracking/run_writes.py).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from sgdlab import numerics
from sgdlab.params import flatten, param_text
from sgdlab.tracking import tags
from sgdlab.tracking.location import retried
from sgdlab.tracking.claims import contest
from sgdlab.tracking.datasets import dataset_record
from sgdlab.tracking.query import RunRecord, trial_records
from sgdlab.tracking.record_store import create_runs, update_runs
from sgdlab.tracking.run_records import NewRun, RunUpdate
from sgdlab.tracking.store import SweepHandle, client

MAX_BATCH = 900  # metric values a run buffers before it writes them
PACK_VALUES = 1_000_000  # metric values a pack buffers at most (about 250 MB) before it writes them
MAX_PARAM_CHARS = 6000
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10x faster than the Python emitter


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunSpec:
    """A trial attempt's run, before it is created."""

    trial_id: str
    config: dict
    attempt: int
    run_name: str
    kind: str = "train"
    extra_tags: dict[str, str] = field(default_factory=dict)


def start_runs(handle: SweepHandle, specs: list[RunSpec], heartbeat_s: float | None = 15.0,
               stale_after_s: float = 120.0) -> list["TrialRun"]:
    """Create the runs of trial attempts in one write (RUNNING, tags, the flattened config as params, the data set
    as dataset input), each with its config.yaml artifact."""
    now, node = f"{time.time():.3f}", socket.gethostname()
    new = [NewRun(spec.run_name,
                  {tags.SWEEP: handle.sweep, tags.TRIAL_ID: spec.trial_id, tags.KIND: spec.kind,
                   tags.ATTEMPT: str(spec.attempt), tags.PARENT: handle.sweep_run_id, tags.NODE: node,
                   tags.HEARTBEAT: now, tags.NUMERICS: str(numerics.VERSION), tags.SUBMISSION: handle.submission,
                   **handle.run_tags, **spec.extra_tags},
                  {k: param_text(v)[:MAX_PARAM_CHARS] for k, v in flatten(spec.config).items()},
                  dataset_record(spec.config) if "data" in spec.config else None, spec.kind) for spec in specs]
    created = create_runs(handle.uri, handle.experiment_id, new)
    runs = [TrialRun(handle, spec.trial_id, spec.kind, run_id, artifact_uri, heartbeat_s, stale_after_s)
            for spec, (run_id, artifact_uri) in zip(specs, created)]
    for run, spec in zip(runs, specs):
        run.log_text(yaml.dump(spec.config, Dumper=YAML_DUMPER, sort_keys=False), "config.yaml")
    return runs


class TrialRun:
    """A created run: buffered metrics, artifacts, and its end. heartbeat_s=None: no heartbeat of its own;
    stale_after_s: when other runs' heartbeats count as stale (tracking.stale_after_s), for the claim check."""

    def __init__(self, handle: SweepHandle, trial_id: str, kind: str, run_id: str, artifact_uri: str,
                 heartbeat_s: float | None = 15.0, stale_after_s: float = 120.0):
        self.handle, self.trial_id, self.kind, self.run_id = handle, trial_id, kind, run_id
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.buffer: list[tuple[str, float, int, int]] = []  # key, value, timestamp (ms), step
        # Artifacts go straight to the run's artifact location (MlflowClient would first read the run back).
        self.artifacts = get_artifact_repository(artifact_uri, tracking_uri=handle.uri)
        self.last_write = time.monotonic()

    @classmethod
    def start(cls, handle: SweepHandle, trial_id: str, config: dict, *, attempt: int, run_name: str,
              kind: str = "train", extra_tags: dict[str, str] | None = None,
              heartbeat_s: float | None = 15.0, stale_after_s: float = 120.0) -> "TrialRun":
        """Create the run of one trial attempt."""
        spec = RunSpec(trial_id, config, attempt, run_name, kind, extra_tags or {})
        return start_runs(handle, [spec], heartbeat_s, stale_after_s)[0]

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.buffer_metrics(step, metrics)
        if len(self.buffer) >= MAX_BATCH or self.beat_due():
            self.flush()

    def buffer_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Keep metrics for the next write."""
        now = _now_ms()
        self.buffer.extend((k, float(v), now, step) for k, v in metrics.items())

    def beat_due(self) -> bool:
        return self.heartbeat_s is not None and time.monotonic() - self.last_write >= self.heartbeat_s

    def beat(self) -> None:
        """Refresh the heartbeat if it is due (cheap to call every step)."""
        if self.beat_due():
            self.flush()

    def pending(self, extra_tags: dict[str, str] | None = None, status: str | None = None) -> RunUpdate:
        """The buffered metrics, a fresh heartbeat and the given tags and end status, as one update; empties the
        buffer."""
        update = RunUpdate(self.run_id, self.buffer, {tags.HEARTBEAT: f"{time.time():.3f}", **(extra_tags or {})},
                           status)
        self.buffer, self.last_write = [], time.monotonic()
        return update

    def flush(self, extra_tags: dict[str, str] | None = None) -> None:
        update_runs(self.handle.uri, [self.pending(extra_tags)])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.log_bytes(text.encode(), artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Write bytes as an artifact (for example a checkpoint), replacing an earlier one of the same name (on a
        local artifact store the file is written in place and renamed over the old one: never half-written)."""
        folder, _, name = artifact_file.rpartition("/")
        if isinstance(self.artifacts, LocalArtifactRepository):
            target = Path(self.artifacts.artifact_dir) / artifact_file
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            retried(lambda: self.artifacts.log_artifact(str(path), folder or None))

    def contest(self) -> str | None:
        """Why this run must end as a duplicate (claims.contest on its trial's runs as stored now), or None. A
        probe run competes only with probe runs of the same measurement (tag sgdlab.probe_id)."""
        runs = trial_records(self.handle.uri, self.handle.experiment_id, [self.trial_id], self.kind)[self.trial_id]
        own = next((r for r in runs if r.run_id == self.run_id), None)
        if own is not None and tags.PROBE_ID in own.tags:
            runs = [r for r in runs if r.tags.get(tags.PROBE_ID) == own.tags[tags.PROBE_ID]]
        return contest(runs, self.run_id, self.stale_after_s, time.time())

    def finish(self, outcome: str) -> str | None:
        """End FINISHED with an outcome if the run still holds its trial (claims rule 3), else KILLED with outcome
        'duplicate'; returns None, or why it is a duplicate."""
        reason = self.contest()
        update_runs(self.handle.uri, [self.ending(outcome, reason)])
        return reason

    def ending(self, outcome: str, duplicate: str | None = None) -> RunUpdate:
        """The update that ends the run: FINISHED with its outcome, or KILLED as a duplicate (`duplicate`: why)."""
        if duplicate is None:
            return self.pending({tags.OUTCOME: outcome}, "FINISHED")
        return self.pending({tags.OUTCOME: tags.DUPLICATE, tags.ERROR: duplicate}, "KILLED")

    def fail(self, exc: BaseException) -> str:
        """Record an exception: FAILED, one-line error tag, traceback artifact. Returns the one-line error."""
        line = tags.one_line(exc)
        tb = "".join(traceback.format_exception(exc))
        try:
            self.log_text(tb, "traceback.txt")
        finally:
            update_runs(self.handle.uri, [self.pending({tags.OUTCOME: "error", tags.ERROR: line}, "FAILED")])
        return line


class PackRuns:
    """The runs of a pack's members (first attempts of their trials, or attempts after lost ones), written
    together. Created in one write; a member's metrics are buffered and written with those of all members when
    one of them holds MAX_BATCH values or the pack PACK_VALUES, every flush_s seconds (so that a running trial's
    latest metrics are never older than that in the store), and before a checkpoint is written (so that a
    resumed attempt finds the history up to its snapshot); the pack's heartbeat goes on the run of one member
    still training every heartbeat_s; members ended between two ticks are checked (claims rule 3) and ended in one
    write, and then their `ended(status, reason)` callbacks run. Call claim() once after creating, tick() once per
    step and close() at the end."""

    def __init__(self, handle: SweepHandle, specs: list[RunSpec], heartbeat_s: float, stale_after_s: float,
                 flush_s: float = 15.0):
        self.runs = start_runs(handle, specs, heartbeat_s=None, stale_after_s=stale_after_s)
        self.handle, self.heartbeat_s, self.stale_after_s = handle, heartbeat_s, stale_after_s
        self.flush_s, self.last_flush = flush_s, time.monotonic()
        self.training = set(range(len(specs)))
        self.buffered, self.full = 0, False
        self.ending: list[tuple[int, str, Callable[[str, str], None]]] = []
        self.last_beat = time.monotonic()

    def _contests(self, members: list[int]) -> dict[int, str | None]:
        """claims.contest for these members, from one read of their trials' runs."""
        runs = trial_records(self.handle.uri, self.handle.experiment_id,
                             sorted({self.runs[m].trial_id for m in members}))
        now = time.time()
        return {m: contest(runs[self.runs[m].trial_id], self.runs[m].run_id, self.stale_after_s, now)
                for m in members}

    def claim(self) -> dict[int, str]:
        """Claims rule 2: {member: reason} for the members whose trial another run holds; their runs are ended
        KILLED (outcome 'duplicate') in one write, and they must not train."""
        lost = {m: reason for m, reason in self._contests(sorted(self.training)).items() if reason is not None}
        if lost:
            update_runs(self.handle.uri, [self.runs[m].ending("", reason) for m, reason in lost.items()])
            self.training.difference_update(lost)
        return lost

    def log_metrics(self, member: int, step: int, metrics: dict[str, float]) -> None:
        run = self.runs[member]
        run.buffer_metrics(step, metrics)
        self.buffered += len(metrics)
        self.full = self.full or len(run.buffer) >= MAX_BATCH or self.buffered >= PACK_VALUES

    def log_points(self, member: int, points: list[tuple[str, float, int, int]]) -> None:
        """Add already-timestamped metric values (key, value, timestamp ms, step) to a member's next write: the
        history a resumed attempt carries over."""
        self.runs[member].buffer.extend(points)
        self.buffered += len(points)

    def finish(self, member: int, outcome: str, ended: Callable[[str, str], None]) -> None:
        """End a member with an outcome at the next tick; `ended(status, reason)` runs once that is written:
        ('FINISHED', '') or ('KILLED', why the run is a duplicate)."""
        self.training.discard(member)
        self.ending.append((member, outcome, ended))

    def fail(self, member: int, exc: BaseException) -> str:
        """End a member FAILED (TrialRun.fail); returns the one-line error."""
        self.training.discard(member)
        return self.runs[member].fail(exc)

    def log_bytes(self, member: int, data: bytes, artifact_file: str) -> None:
        self.runs[member].log_bytes(data, artifact_file)

    def checkpoint(self, member: int, data: bytes, artifact_file: str) -> None:
        """Write a member's snapshot after the metrics buffered so far (every member's, in one write)."""
        if self.runs[member].buffer:
            self._write_buffers()
        self.log_bytes(member, data, artifact_file)

    def run_id(self, member: int) -> str:
        return self.runs[member].run_id

    def _write_buffers(self) -> None:
        update_runs(self.handle.uri, [self.runs[m].pending() for m in sorted(self.training)])
        self.buffered, self.full, self.last_beat = 0, False, time.monotonic()
        self.last_flush = self.last_beat

    def tick(self) -> None:
        """Write what is due: members ended since the last tick, full or flush_s-old buffers, the heartbeat."""
        if self.ending:
            ending, self.ending = self.ending, []
            reasons = self._contests([m for m, _, _ in ending])
            callbacks = {self.runs[m].run_id: (ended, reasons[m]) for m, _, ended in ending}

            def written(part: list[RunUpdate]) -> None:  # a member's result counts once its end is stored
                for one in part:
                    ended, reason = callbacks[one.run_id]
                    ended(one.status, reason or "")

            update_runs(self.handle.uri, [self.runs[m].ending(outcome, reasons[m]) for m, outcome, _ in ending],
                        written)
        if self.full or (self.buffered and time.monotonic() - self.last_flush >= self.flush_s):
            self._write_buffers()
        elif self.training and time.monotonic() - self.last_beat >= self.heartbeat_s:
            self.runs[min(self.training)].flush()
            self.last_beat = time.monotonic()

    def close(self) -> None:
        """Write the endings still due (members that ended on the pack's last step)."""
        if self.ending:
            self.tick()


class NoRuns:
    """The records of a pack on a data-parallel rank other than 0: nothing is written (rank 0 writes the runs and
    decides the claims); the same calls as PackRuns."""

    def claim(self) -> dict[int, str]:
        return {}

    def log_metrics(self, member: int, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_points(self, member: int, points: list) -> None:
        pass

    def log_bytes(self, member: int, data: bytes, artifact_file: str) -> None:
        pass

    def checkpoint(self, member: int, data: bytes, artifact_file: str) -> None:
        pass

    def finish(self, member: int, outcome: str, ended: Callable[[str, str], None]) -> None:
        ended("FINISHED", "")

    def fail(self, member: int, exc: BaseException) -> str:
        return tags.one_line(exc)

    def run_id(self, member: int) -> None:
        return None

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


def trial_runs(handle: SweepHandle, trial_id: str, kind: str = "train") -> list[RunRecord]:
    """The records of one trial's runs of one kind (all attempts), oldest first (query.trial_records)."""
    return trial_records(handle.uri, handle.experiment_id, [trial_id], kind)[trial_id]


def end_runs(handle: SweepHandle, run_ids: list[str], status: str, error: str) -> None:
    """End runs whose worker cannot end them (it died, or the driver was interrupted) with a one-line reason."""
    update_runs(handle.uri, [RunUpdate(run_id, tags={tags.OUTCOME: "error", tags.ERROR: error[:500]}, status=status)
                             for run_id in run_ids])


def end_running(handle: SweepHandle, trial_id: str, status: str, error: str, kind: str = "train") -> list[str]:
    """End the RUNNING runs of a trial (of one kind) that this driver's submission made (never another driver's);
    returns their ids."""
    ids = [r.run_id for r in trial_runs(handle, trial_id, kind)
           if r.status == "RUNNING" and r.tags.get(tags.SUBMISSION) == handle.submission]
    end_runs(handle, ids, status, error)
    return ids
