"""One trial trained by W data-parallel workers (torch.distributed), on the same trajectory as one process.

Every worker runs this loop in a process group of W ranks (Ray Train's TorchTrainer sets it up: gloo on CPUs,
nccl on GPUs) and holds the full data set and the same parameters. At each step:

  1. every rank draws the SAME global batch of B indices, a function of `seed` and the step
     (training/sampler.py, exactly as training/loop.py draws it), and takes its contiguous shard
     idx[r B/W : (r+1) B/W]  (B % W == 0 is required, so that every shard has B/W points);
  2. it computes g_r = grad of the mean loss over its shard;
  3. the gradients are summed with one all_reduce (flattened into one vector, as DDP buckets them) and divided
     by W:  g = (1/W) sum_r g_r = grad of the mean loss over the whole batch of B, because the shards have equal
     sizes;  the batch loss is averaged the same way;
  4. every rank applies the same pure optimizer update (training/optim.py) to the same g, so the parameters stay
     identical on all ranks without being broadcast.

This is DDP's maths (gradient averaging over equal shards), written as an explicit dist.all_reduce of the
gradient dict rather than through torch's DistributedDataParallel wrapper, because the loop is functional
(torch.func.functional_call on a parameter dict, DESIGN.md) and DDP's hooks live on an nn.Module's own
parameters. The trajectory equals the single-process one with the same global batch up to the order of
floating-point sums (tested in float64 to 1e-10 relative, tests/test_distributed.py).

Metrics on the full train and test sets are computed on shards too (each rank evaluates a contiguous slice, and
sums, counts and the minimum margin are all-reduced), so evaluating a large model costs 1/W per rank. Stopping
follows training/loop.py (divergence, hinge zero-loss check, fitted set, loss threshold, max_steps); every
decision is taken from all-reduced numbers and the wall-time limit from rank 0's clock (broadcast), so all ranks
stop at the same step. Callbacks run on every rank; the caller logs from rank 0 only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.func import grad_and_value

from sgdlab.training import optim
from sgdlab.training.problem import Problem, build_problem
from sgdlab.training.sampler import batch_indices

EVAL_CHUNK = 4096  # examples per forward pass when evaluating a whole set


@dataclass
class Result:
    outcome: str  # converged | diverged | max_steps
    steps: int
    metrics: dict[str, float]
    params: dict[str, torch.Tensor]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_batch(batch_size: int, workers: int) -> None:
    if workers < 1 or batch_size % workers != 0:
        raise ValueError(f"data.batch_size: B = {batch_size} is not divisible by resources.workers_per_trial = "
                         f"{workers}: each of the W workers takes B / W points of every batch")


def shard(idx: torch.Tensor, rank: int, workers: int) -> torch.Tensor:
    """Rank's contiguous share of a global batch of indices (len(idx) % workers == 0)."""
    check_batch(len(idx), workers)
    size = len(idx) // workers
    return idx[rank * size:(rank + 1) * size]


def split(n: int, rank: int, workers: int) -> slice:
    """Rank's contiguous slice of n items (sizes differ by at most one), for evaluation and probe data."""
    return slice(rank * n // workers, (rank + 1) * n // workers)


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def average_gradients(grads: dict[str, torch.Tensor], value: torch.Tensor, workers: int):
    """(1/W) sum over ranks of the shard gradients and shard losses, in one all_reduce."""
    if workers == 1:
        return grads, value
    flat = torch.cat([g.reshape(-1) for g in grads.values()] + [value.reshape(1).to(next(iter(grads.values())))])
    all_reduce(flat).div_(workers)
    parts = flat[:-1].split([g.numel() for g in grads.values()])
    return {k: p.view_as(g) for (k, g), p in zip(grads.items(), parts)}, flat[-1]


def set_metrics(problem: Problem, params, x, y, f0, rank: int, workers: int) -> dict[str, float]:
    """Mean loss, error rate, unfitted count and minimum margin of F on a whole set, each rank one slice."""
    part = split(len(x), rank, workers)
    loss = problem.loss
    with torch.no_grad():
        xp, yp, fp = x[part], y[part], f0[part]
        F = torch.cat([problem.predict(params, (xp[i:i + EVAL_CHUNK], None, fp[i:i + EVAL_CHUNK]))
                       for i in range(0, len(xp), EVAL_CHUNK)] or [fp[:0]])
        sums = torch.stack([loss.per_example(F, yp).sum().double(), loss.error(F, yp).double().sum(),
                            (~loss.fitted(F, yp)).double().sum()])
        margin = loss.margin(F, yp).min().double() if len(yp) else torch.tensor(math.inf, dtype=torch.float64)
    sums, margin = all_reduce(sums.to(x.device)), all_reduce(margin.reshape(1).to(x.device), dist.ReduceOp.MIN)
    return {"loss": float(sums[0]) / len(x), "error": float(sums[1]) / len(x), "unfitted": float(sums[2]),
            "min_margin": float(margin[0])}


def weight_change(params, params0) -> tuple[float, float]:
    """(||w - w0||, ||w - w0|| / ||w0||) over all parameters (the same on every rank)."""
    delta = float(torch.sqrt(sum(((params[k] - params0[k]) ** 2).sum() for k in params)))
    return delta, delta / float(torch.sqrt(sum((p**2).sum() for p in params0.values())))


def train(cfg: dict, on_log: Callable[[int, dict], None] = lambda step, m: None,
          on_step: Callable[[int], None] = lambda step: None,
          on_checkpoint: Callable[[dict], None] = lambda snapshot: None, resume: dict | None = None,
          on_params: Callable[[int, dict], None] = lambda step, params: None, params_every: int | None = None,
          device: str = "cpu") -> Result:
    """Train one trial on this rank's shards (module docstring); without a process group it is one process.
    Callbacks, snapshots and `resume` are those of training/loop.py; `resume` must be the same on every rank."""
    rank, workers = world()
    tcfg, batch_size = cfg["train"], cfg["data"]["batch_size"]
    check_batch(batch_size, workers)
    problem = build_problem(cfg, device)
    data, loss, params0 = problem.data, problem.loss, problem.params0
    optimizer = optim.build(cfg["optim"])
    lr, n_train = cfg["optim"]["lr"], len(data.x_train)

    def shard_loss(params, idx):
        batch = problem.train_batch(idx)
        return problem.batch_loss(problem.predict(params, batch), batch)

    def train_set(params):
        return set_metrics(problem, params, data.x_train, data.y_train, problem.f0_train, rank, workers)

    def metrics(params, steps, t):
        delta, relative = weight_change(params, params0)
        tr = train_set(params)
        te = set_metrics(problem, params, data.x_test, data.y_test, problem.f0_test, rank, workers)
        return {"train_loss": tr["loss"], "train_error": tr["error"], "test_loss": te["loss"],
                "test_error": te["error"], "n_unfitted": tr["unfitted"], "min_margin": tr["min_margin"],
                "weight_delta": delta, "weight_change": relative, "train_time": t, "steps": float(steps)}

    def bad(value: float) -> bool:
        return not math.isfinite(value) or value > tcfg["divergence_loss"]

    def timed_out(started: float) -> bool:
        """Rank 0's clock decides for everyone (a broadcast), so that all ranks stop at the same step."""
        flag = torch.tensor([tcfg["max_time_s"] is not None and time.monotonic() - started > tcfg["max_time_s"]],
                            dtype=torch.float64, device=device)
        if workers > 1 and tcfg["max_time_s"] is not None:
            dist.broadcast(flag, src=0)
        return bool(flag[0])

    params, state, steps, t = dict(params0), optimizer.init(params0), 0, 0.0
    if resume is not None:
        params, state, steps, t = resume["params"], resume["opt_state"], resume["steps"], resume["t"]
    outcome, started, every, logged = "max_steps", time.monotonic(), tcfg["checkpoint_every"], None
    if params_every and steps == 0:
        on_params(0, params)
    while steps < tcfg["max_steps"]:
        on_step(steps + 1)
        seed_and_step = torch.tensor([cfg["seed"], steps], device=device)
        idx = shard(batch_indices(seed_and_step[:1], seed_and_step[1:], n_train, batch_size)[0], rank, workers)
        grads, value = average_gradients(*grad_and_value(shard_loss)(params, idx), workers)
        if bad(float(value)):
            outcome = "diverged"
            break
        if tcfg["stop_when_fitted"] and loss.name == "hinge" and float(value) == 0.0:
            if train_set(params)["unfitted"] == 0:
                outcome = "converged"
                break
        params, state = optimizer.update(params, grads, state)
        steps, t, logged = steps + 1, t + lr, None
        if params_every and steps % params_every == 0:
            on_params(steps, params)
        if every and steps % every == 0:
            on_checkpoint({"steps": steps, "t": t, "params": params, "opt_state": state})
        if steps % tcfg["log_every"] == 0:
            logged = metrics(params, steps, t)
            on_log(steps, logged)
            if bad(logged["train_loss"]):
                outcome = "diverged"
                break
            if (tcfg["stop_when_fitted"] and logged["n_unfitted"] == 0) or (
                    tcfg["loss_threshold"] is not None and logged["train_loss"] <= tcfg["loss_threshold"]):
                outcome = "converged"
                break
        if timed_out(started):
            break

    final = logged or metrics(params, steps, t)
    if outcome != "diverged" and bad(final["train_loss"]):
        outcome = "diverged"
    if logged is None:  # otherwise these metrics were just logged
        on_log(steps, final)
    return Result(outcome=outcome, steps=steps, metrics=final, params=params)
