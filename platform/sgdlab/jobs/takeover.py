"""The take-over of a trial's earlier attempts by the attempt that starts now: rule 1 of the claim protocol
(tracking/claims.py).

A trial that has a FINISHED run (it finished before its pack's worker died, or another driver finished it) is not
trained again; one with a live RUNNING run of another driver's submission is left to that run. RUNNING runs whose
worker is gone (this submission's own: Ray retried the task after its worker died; or any with a stale
heartbeat) are ended FAILED ('worker lost'), the new run becomes the next attempt, and training continues from the
newest `checkpoint/last.pt` snapshot of those runs and of the trial's KILLED runs (a driver stopped by Ctrl-C
ends its runs KILLED), with the numbers of an uninterrupted run (CPU) and the metric history up to the snapshot
copied over. Only runs of the current numerics version count as finished or are resumed from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sgdlab.jobs.summary import TrialSummary
from sgdlab.tracking import tags
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.claims import orphans, running_elsewhere
from sgdlab.tracking.histories import metric_points
from sgdlab.tracking.query import RunRecord, current, finished_run, next_attempt, trial_records
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_runs
from sgdlab.training import checkpoint


@dataclass
class Takeover:
    attempt: int  # the attempt number this run gets
    snapshot: dict | None = None  # newest snapshot of an orphaned run, to resume from
    resumed_from: str | None = None  # that run's id
    history: list = field(default_factory=list)  # its metric values up to the snapshot: (key, value, ms, step)
    finished: TrialSummary | None = None  # the trial's FINISHED run, if it has one (then there is nothing to do)
    elsewhere: TrialSummary | None = None  # the trial is held by another driver's live run (nothing to do)


def take_over(handle: SweepHandle, trial_id: str, runs: list[RunRecord], attempt: int,
              stale_after_s: float) -> Takeover:
    """End the trial's orphaned RUNNING runs and find what to continue from. `runs`: the trial's train runs;
    `attempt`: the planned number."""
    attempt = max(attempt, next_attempt(runs))
    finished = finished_run(runs)
    if finished is not None and finished.tags.get(tags.SUBMISSION) != handle.submission:
        return Takeover(attempt, elsewhere=TrialSummary.elsewhere(
            trial_id, finished.run_id, f"finished by run {finished.run_id} of another driver"))
    if finished is not None:  # by this submission, before the task's worker died
        return Takeover(attempt, finished=TrialSummary(trial_id, "finished", finished.run_id, finished.outcome,
                                                       dict(finished.metrics)))
    now = time.time()
    lost = orphans(runs, handle.submission, stale_after_s, now)
    if lost:
        end_runs(handle, [r.run_id for r in lost], "FAILED",
                 f"worker lost (process died or heartbeat stopped); continued by attempt {attempt}")
    held = running_elsewhere(runs, handle.submission, stale_after_s, now)
    if held is not None:
        return Takeover(attempt, elsewhere=TrialSummary.elsewhere(trial_id, held.run_id))
    interrupted = [r for r in runs if r.status == "KILLED"]
    resumable = sorted(current([*lost, *interrupted]), key=lambda r: (r.start_time, r.run_id))
    for run in reversed(resumable):  # a snapshot of other numerics would continue other numbers
        data = download_bytes(handle.uri, run.run_id, checkpoint.LAST)
        if data is not None:
            snapshot = checkpoint.from_bytes(data)["state"]
            history = [p for p in metric_points(handle.uri, run.run_id) if p[3] <= snapshot["steps"]]
            return Takeover(attempt, snapshot, run.run_id, history)
    return Takeover(attempt)


def take_over_all(handle: SweepHandle, trial_ids: list[str], attempts: list[int],
                  stale_after_s: float) -> list[Takeover]:
    """take_over for each trial, after one read of all their runs (on a SQLite store)."""
    runs = trial_records(handle.uri, handle.experiment_id, trial_ids)
    return [take_over(handle, trial_id, runs[trial_id], attempt, stale_after_s) if runs[trial_id] else Takeover(attempt)
            for trial_id, attempt in zip(trial_ids, attempts)]
