"""The training job of a multi-worker trial (resources.workers_per_trial = W > 1), run by every one of the W ranks.

Every rank trains (training/distributed.py: same global batches, contiguous shards, all-reduced gradients);
rank 0 alone talks to MLflow, with the same records as a one-process trial (jobs/train.py): the run and its
tags (plus `sgdlab.workers`), params, config.yaml, metrics, checkpoint/last.pt snapshots, checkpoint/final.pt.
Rank 0 also takes over the trial's orphaned RUNNING runs (a worker group that died and was restarted) and hands
the newest snapshot to the other ranks, so that a restarted group resumes where the lost one left off.

The sharpness along training (probe.every) uses the distributed operator: the probe data is split across the
ranks, the Hessian-vector products are all-reduced, every rank runs the same Lanczos.

An exception is recorded by rank 0 (FAILED, traceback) and returned as a failed summary. This assumes every rank
raises it at the same step (bad config, injected fault): an error on one rank only leaves the others waiting in
a collective until the process group's timeout.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from sgdlab.jobs.probe import trajectory_hook
from sgdlab.jobs.train import fault_hook, take_over
from sgdlab.probes.distributed import DistributedCurvatureOperator, shard_data
from sgdlab.tracking import tags
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import TrialRun
from sgdlab.training import checkpoint
from sgdlab.training.distributed import train, world
from sgdlab.training.problem import DTYPES, Problem, build_problem

WORKERS_TAG = "sgdlab.workers"


def distributed_operator(problem: Problem, params: dict, pcfg: dict) -> DistributedCurvatureOperator:
    """The probe's full-data operator (probe.matrix, probe.dtype, the first probe.n_examples training points),
    this rank's contiguous share of the data in chunks of probe.chunk_size."""
    rank, workers = world()
    dtype = DTYPES[pcfg["dtype"]]
    x, y, f0 = problem.train_batches(pcfg["n_examples"], 10**12)[0]
    batches = shard_data((x.to(dtype), y, f0.to(dtype)), rank, workers, pcfg["chunk_size"])
    return DistributedCurvatureOperator(problem.predict, problem.batch_loss,
                                        {k: v.detach().to(dtype) for k, v in params.items()}, batches,
                                        matrix=pcfg["matrix"])


def _broadcast(value):
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_distributed_train(config: dict, handle: SweepHandle, *, trial_id: str, attempt: int, run_name: str,
                          device: str = "cpu") -> dict | None:
    """One rank's part of a multi-worker trial attempt; rank 0 returns the summary, the others None."""
    torch.set_num_threads(max(1, int(config["resources"]["cpus"])))
    rank, workers = world()
    given_attempt, run, snapshot, done, earlier_runs = attempt, None, None, None, 0
    if rank == 0:
        took = take_over(handle, trial_id, attempt)
        attempt, snapshot, earlier_runs = took.attempt, took.snapshot, took.earlier_runs
        if took.finished is not None:  # finished before a worker of the previous group died: nothing to do
            done = {"trial_id": trial_id, "run_id": took.finished.info.run_id, "status": "finished",
                    "outcome": took.finished.data.tags.get(tags.OUTCOME),
                    "metrics": dict(took.finished.data.metrics), "error": ""}
        else:
            extra = {WORKERS_TAG: str(workers)}
            if snapshot:
                extra[tags.RESUMED_FROM] = f"{took.resumed_from}@{snapshot['steps']}"
            run = TrialRun.start(handle, trial_id, config, attempt=attempt, run_name=run_name, kind="train",
                           extra_tags=extra, heartbeat_s=config["tracking"]["heartbeat_s"])
    attempt, snapshot, finished = _broadcast((attempt, snapshot, done is not None))
    if finished:
        return done
    if snapshot is not None:
        snapshot = {**snapshot, "params": {k: v.to(device) for k, v in snapshot["params"].items()}}
    fault = (fault_hook(config) if attempt == given_attempt else None) or (lambda step: None)

    def on_step(step: int) -> None:
        fault(step)
        if run:
            run.beat()

    def on_log(step: int, metrics: dict) -> None:
        if run:
            run.log_metrics(step, metrics)

    def on_checkpoint(state: dict) -> None:
        if run:
            run.log_bytes(checkpoint.to_bytes(state, config), checkpoint.LAST)

    started = time.perf_counter()
    try:
        on_params, params_every = lambda step, params: None, config["probe"]["every"]
        if params_every:
            on_params = trajectory_hook(build_problem(config, device), config["probe"], on_log,
                                        make_operator=distributed_operator)

        result = train(config, on_log=on_log, on_step=on_step, on_checkpoint=on_checkpoint, resume=snapshot,
                       on_params=on_params, params_every=params_every, device=device)
        if run:
            run.log_metrics(result.steps, {"wall_time": time.perf_counter() - started})
            params = {k: v.cpu() for k, v in result.params.items()}
            run.log_bytes(checkpoint.to_bytes({"params": params, "steps": result.steps}, config), checkpoint.FINAL)
    except Exception as exc:  # recorded on the run by rank 0; the sweep goes on
        if not run:
            return None
        return {"trial_id": trial_id, "run_id": run.run_id, "status": "failed", "error": run.fail(exc)}
    if not run:
        return None
    status = run.finish(result.outcome, check_duplicates=earlier_runs > 0)
    return {"trial_id": trial_id, "run_id": run.run_id, "status": "finished" if status == "FINISHED" else "failed",
            "outcome": result.outcome, "metrics": result.metrics,
            "error": "" if status == "FINISHED" else "duplicate of a finished run"}
