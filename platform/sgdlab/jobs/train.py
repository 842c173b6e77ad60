"""The training job: one trial attempt, config dict in, summary dict out, every record through tracking/.

An exception inside the trial ends its run FAILED (one-line error, traceback artifact) and is returned as a
failed summary, so that the other trials go on. Divergence is a result: FINISHED with outcome 'diverged'.
"""

from __future__ import annotations

import os
import signal

import torch

from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import TrialRun
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


def run_train(config: dict, handle: SweepHandle, *, trial_id: str, attempt: int, run_name: str,
              extra_tags: dict[str, str] | None = None) -> dict:
    torch.set_num_threads(max(1, int(config["resources"]["cpus"])))
    run = TrialRun(handle, trial_id, config, attempt=attempt, run_name=run_name, kind="train",
                   extra_tags=extra_tags, heartbeat_s=config["tracking"]["heartbeat_s"])
    fault = fault_hook(config)

    def on_step(step: int) -> None:
        fault(step)
        run.beat()

    try:
        result = train(config, on_log=run.log_metrics, on_step=on_step)
    except Exception as exc:  # recorded on the run; the sweep goes on
        return {"trial_id": trial_id, "run_id": run.run_id, "status": "failed", "error": run.fail(exc)}
    run.finish(result.outcome)
    return {"trial_id": trial_id, "run_id": run.run_id, "status": "finished", "outcome": result.outcome,
            "metrics": result.metrics}
