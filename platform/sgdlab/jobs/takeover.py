"""The take-over of a trial's earlier attempts by the attempt that starts now.

A trial's RUNNING runs at the start of a training job belong to workers that died (Ray retries a task only after
its worker is lost, and the planner never starts a trial that runs elsewhere). They are ended FAILED ('worker
lost'), the new run becomes the next attempt, and training continues from the newest of their
`checkpoint/last.pt` snapshots, with the numbers of an uninterrupted run (CPU). A trial that has a FINISHED run
(it finished before its pack's worker died) is not trained again. Only runs of the current numerics version
count as finished or are resumed from.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgdlab.jobs.summary import TrialSummary
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.query import current, finished_run, next_attempt, trials_with_runs
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_runs, trial_runs
from sgdlab.training import checkpoint


@dataclass
class Takeover:
    attempt: int  # the attempt number this run gets
    snapshot: dict | None = None  # newest snapshot of an orphaned run, to resume from
    resumed_from: str | None = None  # that run's id
    earlier_runs: int = 0  # runs of the trial before this one
    finished: TrialSummary | None = None  # the trial's FINISHED run, if it has one (then there is nothing to do)


def take_over(handle: SweepHandle, trial_id: str, attempt: int) -> Takeover:
    """End the trial's orphaned RUNNING runs and find what to continue from. `attempt`: the planned number."""
    runs = trial_runs(handle, trial_id)
    attempt = max(attempt, next_attempt(runs))
    finished = finished_run(runs)
    if finished is not None:
        done = TrialSummary(trial_id, "finished", finished.run_id, finished.outcome, dict(finished.metrics))
        return Takeover(attempt, earlier_runs=len(runs), finished=done)
    orphans = [r for r in runs if r.status == "RUNNING"]
    if orphans:
        end_runs(handle, [r.run_id for r in orphans], "FAILED",
                 f"worker lost (process died or heartbeat stopped); continued by attempt {attempt}")
    for run in reversed(current(orphans)):  # a snapshot of other numerics would continue other numbers
        data = download_bytes(handle.uri, run.run_id, checkpoint.LAST)
        if data is not None:
            return Takeover(attempt, checkpoint.from_bytes(data)["state"], run.run_id, len(runs))
    return Takeover(attempt, earlier_runs=len(runs))


def take_over_all(handle: SweepHandle, trial_ids: list[str], attempts: list[int]) -> list[Takeover]:
    """take_over for each trial; on a SQLite store, one query first finds the trials that have runs at all."""
    with_runs = trials_with_runs(handle.uri, handle.experiment_id, trial_ids)  # None: ask each trial
    return [take_over(handle, trial_id, attempt) if with_runs is None or trial_id in with_runs else Takeover(attempt)
            for trial_id, attempt in zip(trial_ids, attempts)]
