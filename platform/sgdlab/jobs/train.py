"""The training job: one trial attempt, config dict in, summary dict out, every record through tracking/.

An exception inside the trial ends its run FAILED (one-line error, traceback artifact) and is returned as a
failed summary, so that the other trials go on. Divergence is a result: FINISHED with outcome 'diverged'.

Resuming: a trial's RUNNING runs at the start of this job belong to workers that died (Ray retries a task only
after its worker is lost, and the planner never starts a trial that runs elsewhere). They are ended FAILED
('worker lost'), this run becomes the next attempt, and training continues from the newest of their
`checkpoint/last.pt` snapshots: the numbers equal those of an uninterrupted run on CPU.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.artifacts import download_bytes
from sgdlab.tracking.writer import TrialRun, end_runs, trial_runs
from sgdlab.training import checkpoint
from sgdlab.training.loop import train


class InjectedFault(RuntimeError):
    """Raised by fault.raise_at_step."""


def fault_hook(config: dict):
    """on_step callback for the `fault` group: raise or SIGKILL this process at a step, for chosen seeds only."""
    fault = config["fault"]
    if fault["seeds"] is not None and config["seed"] not in fault["seeds"]:
        return lambda step: None

    def hook(step: int) -> None:
        if step == fault["kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == fault["raise_at_step"]:
            raise InjectedFault(f"fault.raise_at_step={step} (injected)")

    return hook


def take_over(handle: SweepHandle, trial_id: str, attempt: int) -> tuple[int, dict | None, str | None, int]:
    """End the trial's orphaned RUNNING runs.

    Returns (attempt to use, newest snapshot or None, its run id, number of earlier runs of the trial)."""
    runs = trial_runs(handle, trial_id)
    attempt = max([attempt] + [int(r.data.tags.get(tags.ATTEMPT, "1")) + 1 for r in runs])
    orphans = [r for r in runs if r.info.status == "RUNNING"]
    if not orphans:
        return attempt, None, None, len(runs)
    end_runs(handle, [r.info.run_id for r in orphans], "FAILED",
             f"worker lost (process died or heartbeat stopped); continued by attempt {attempt}")
    for run in reversed(orphans):
        data = download_bytes(handle.uri, run.info.run_id, checkpoint.LAST)
        if data is not None:
            return attempt, checkpoint.from_bytes(data)["state"], run.info.run_id, len(runs)
    return attempt, None, None, len(runs)


def run_train(config: dict, handle: SweepHandle, *, trial_id: str, attempt: int, run_name: str) -> dict:
    torch.set_num_threads(max(1, int(config["resources"]["cpus"])))
    given_attempt = attempt
    attempt, snapshot, resumed_from, earlier_runs = take_over(handle, trial_id, attempt)
    extra = {tags.RESUMED_FROM: f"{resumed_from}@{snapshot['steps']}"} if snapshot else None
    run = TrialRun(handle, trial_id, config, attempt=attempt, run_name=run_name, kind="train",
                   extra_tags=extra, heartbeat_s=config["tracking"]["heartbeat_s"])
    # A fault acts once: not again in the retry of a task it killed, nor in a rerun of a lost trial.
    fault = fault_hook(config) if attempt == given_attempt else (lambda step: None)

    def on_step(step: int) -> None:
        fault(step)
        run.beat()

    def on_checkpoint(state: dict) -> None:
        run.log_bytes(checkpoint.to_bytes(state, config), checkpoint.LAST)

    started = time.perf_counter()
    try:
        on_params, params_every = lambda step, params: None, config["probe"]["every"]
        if params_every:  # sharpness along training (imported here: probes load only when asked for)
            from sgdlab.jobs.probe import trajectory_hook
            from sgdlab.training.problem import build_problem

            on_params = trajectory_hook(build_problem(config), config["probe"], run.log_metrics)
        result = train(config, on_log=run.log_metrics, on_step=on_step, on_checkpoint=on_checkpoint,
                       resume=snapshot, on_params=on_params, params_every=params_every)
        run.log_metrics(result.steps, {"wall_time": time.perf_counter() - started})
        run.log_bytes(checkpoint.to_bytes({"params": result.params, "steps": result.steps}, config),
                      checkpoint.FINAL)
    except Exception as exc:  # recorded on the run; the sweep goes on
        return {"trial_id": trial_id, "run_id": run.run_id, "status": "failed", "error": run.fail(exc)}
    status = run.finish(result.outcome, check_duplicates=earlier_runs > 0)
    return {"trial_id": trial_id, "run_id": run.run_id, "status": "finished" if status == "FINISHED" else "failed",
            "outcome": result.outcome, "metrics": result.metrics,
            "error": "" if status == "FINISHED" else "duplicate of a finished run"}
