"""Ray tasks around the jobs. Resources and retries come from each trial's `resources` group.

Ray retries a task whose worker process died (max_retries = resources.max_retries); an exception inside a
trial is not retried: the job records it and returns a failed summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from sgdlab.jobs.train import run_train
from sgdlab.tracking.store import SweepHandle


@dataclass(frozen=True)
class TrialJob:
    """One trial attempt to run: what the scheduler submits."""

    trial_id: str
    config: dict
    attempt: int
    run_name: str


@ray.remote
def _train_task(config: dict, handle: SweepHandle, trial_id: str, attempt: int, name: str) -> dict:
    return run_train(config, handle, trial_id=trial_id, attempt=attempt, run_name=name)


def submit_train(job: TrialJob, handle: SweepHandle) -> ray.ObjectRef:
    res = job.config["resources"]
    task = _train_task.options(num_cpus=res["cpus"], num_gpus=res["gpu"], max_retries=res["max_retries"],
                               retry_exceptions=False, name=f"train {job.trial_id}")
    return task.remote(job.config, handle, job.trial_id, job.attempt, job.run_name)
