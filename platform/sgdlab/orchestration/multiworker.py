"""Multi-worker trials on Ray Train: one trial trained by resources.workers_per_trial data-parallel workers.

A trial with workers_per_trial = W > 1 is launched by a Ray task that holds no resources (num_cpus=0) and runs a
Ray Train TorchTrainer with W workers, each asking for resources.cpus CPUs and resources.gpu GPUs; the trainer's
controller holds none either. So the W workers are the only resources the trial occupies and a 2-CPU machine
runs a W = 2 trial (a launching task that held a CPU would wait forever for the workers' second CPU). Ray Train
creates the process group: gloo on CPUs, nccl when resources.gpu > 0. Every worker runs
jobs/distributed_train.py; rank 0's summary is the trial's summary. A worker that dies makes Ray Train restart
the whole group (up to resources.max_retries times); the new rank 0 ends the lost run FAILED and resumes from its
last snapshot. A group that fails more often ends the trial's RUNNING run FAILED. The end probe (probe.at_end)
is the ordinary one-process probe task of orchestration/tasks.py.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from typing import Any, Callable

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from sgdlab.jobs.distributed_train import run_distributed_train
from sgdlab.orchestration.tasks import TrialJob, _probe_task, on_this_node
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_running


def run_on_workers(fn: Callable[..., Any], *args, workers: int, cpus: float = 1, gpus: float = 0,
                   max_failures: int = 0, name: str | None = None) -> Any:
    """fn(*args, device=...) on each of `workers` Ray Train workers in one torch.distributed process group
    (gloo on CPUs, nccl on GPUs); returns rank 0's return value (plain containers, numbers, strings and CPU
    tensors: it travels as torch.save bytes, read back with weights_only=True). Needs a connected Ray."""
    use_gpu = gpus > 0
    per_worker = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}

    def worker_loop() -> bytes:
        import ray.train.torch

        value = fn(*args, device=str(ray.train.torch.get_device()) if use_gpu else "cpu")
        buffer = io.BytesIO()  # Ray Train refuses tensors in return values: pass them as torch.save bytes
        torch.save(value, buffer)
        return buffer.getvalue()

    storage = tempfile.mkdtemp(prefix="sgdlab-raytrain-")  # Ray Train's run folder; nothing of ours is kept there
    try:
        trainer = TorchTrainer(
            worker_loop, torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker or None),
            run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures)))
        return torch.load(io.BytesIO(trainer.fit().return_value), weights_only=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _train_on_worker(config: dict, handle: SweepHandle, trial_id: str, attempt: int, name: str,
                     device: str = "cpu") -> dict | None:
    return run_distributed_train(config, on_this_node(handle), trial_id=trial_id, attempt=attempt, run_name=name,
                                 device=device)


@ray.remote(num_cpus=0)
def _multiworker_train_task(config: dict, handle: SweepHandle, trial_id: str, attempt: int, name: str) -> dict:
    res = config["resources"]
    try:
        summary = run_on_workers(_train_on_worker, config, handle, trial_id, attempt, name,
                                 workers=res["workers_per_trial"], cpus=res["cpus"], gpus=res["gpu"],
                                 max_failures=res["max_retries"], name=f"sgdlab-{trial_id}-{attempt}")
        if summary is None:
            raise RuntimeError("rank 0 returned no summary")
        return summary
    except Exception as exc:  # the worker group failed more often than resources.max_retries allows
        text = str(exc).strip()
        error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]
        end_running(handle, trial_id, "FAILED", error)
        return {"trial_id": trial_id, "status": "failed", "error": error}


def fits(res: dict) -> str | None:
    """Why the trial's worker group can never be placed on the connected cluster (None when it can)."""
    total = ray.cluster_resources()
    for key, per_worker in (("CPU", res["cpus"]), ("GPU", res["gpu"])):
        need = per_worker * res["workers_per_trial"]
        if need > total.get(key, 0):
            return (f"resources.workers_per_trial = {res['workers_per_trial']} workers x {per_worker} {key} = "
                    f"{need:g} {key}s, but the Ray cluster has {total.get(key, 0):g}")
    return None


def submit(job: TrialJob, handle: SweepHandle) -> ray.ObjectRef:
    """orchestration/tasks.py submit for a trial with workers_per_trial > 1: train on Ray Train workers, then
    the ordinary end probe if asked."""
    res = job.config["resources"]
    if job.train:
        problem = fits(res)
        if problem:
            return ray.put({"trial_id": job.trial_id, "status": "failed", "error": problem})
        result = _multiworker_train_task.options(name=f"train {job.trial_id} x{res['workers_per_trial']}",
                                                 max_retries=res["max_retries"], retry_exceptions=False).remote(
            job.config, handle, job.trial_id, job.attempt, job.run_name)
    else:
        result = {"trial_id": job.trial_id, "status": "finished", "run_id": job.train_run_id}
    if job.probe:
        result = _probe_task.options(name=f"probe {job.trial_id}", num_cpus=res["cpus"], num_gpus=res["gpu"],
                                     max_retries=res["max_retries"], retry_exceptions=False).remote(
            result, job.config, handle, job.probe_attempt, job.run_name)
    return result
