"""Ray Train for multi-worker trials: a function run on W data-parallel workers in one torch.distributed process
group.

A trial with resources.workers_per_trial = W > 1 is launched by a Ray task that holds no resources
(orchestration/tasks.py) and runs a Ray Train TorchTrainer with W workers, each asking for resources.cpus CPUs
and resources.gpu GPUs; the trainer's controller holds none either. So the W workers are the only resources the
trial occupies and a 2-CPU machine runs a W = 2 trial (a launching task that held a CPU would wait forever for
the workers' second CPU). Ray Train creates the process group (gloo on CPUs, nccl when resources.gpu > 0) and
restarts the whole group when a worker dies (up to resources.max_retries times).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from typing import Any, Callable

import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer


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
