"""The training loop: plain SGD/Adam on F = alpha (f(w) - f(w0)), one short function read top to bottom.

Each step draws a fresh batch of B distinct training points (torch.randperm with a generator seeded by `seed`),
takes the gradient of the batch-mean loss and applies the pure optimizer update. Training time is
t = sum of lr over the steps taken.

Stopping, checked in this order:
  diverged   the batch loss or a logged full loss is non-finite or above train.divergence_loss;
  converged  every training point is fitted (train.stop_when_fitted; for the hinge loss this is checked exactly:
             whenever a batch has zero loss, which is necessary for a fitted training set and the only case in
             which the update is zero) or the full training loss is <= train.loss_threshold (at log steps);
  max_steps  train.max_steps updates, or train.max_time_s of wall time.
Metrics on the full train and test sets are passed to `on_log` every train.log_every steps and at the end.
A snapshot of everything that determines the rest of the run is passed to `on_checkpoint` every
train.checkpoint_every steps; `resume` continues from one bit for bit (CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad_and_value

from sgdlab.training import optim
from sgdlab.training.problem import Problem, build_problem

EVAL_CHUNK = 4096


@dataclass
class Result:
    outcome: str  # converged | diverged | max_steps
    steps: int
    metrics: dict[str, float]
    params: dict[str, torch.Tensor]


def evaluate(problem: Problem, params, x, y, f0) -> dict[str, torch.Tensor]:
    """Loss, error, fitted count and margins of F = alpha (f(w) - f(w0)) on a whole set, in chunks."""
    loss = problem.loss
    F = torch.cat([problem.predict(params, (x[i:i + EVAL_CHUNK], None, f0[i:i + EVAL_CHUNK]))
                   for i in range(0, len(x), EVAL_CHUNK)])
    return {"loss": loss.mean(F, y), "error": loss.error(F, y).double().mean(),
            "unfitted": (~loss.fitted(F, y)).sum(), "min_margin": loss.margin(F, y).min()}


def weight_change(params, params0) -> tuple[float, float]:
    """(||w - w0||, ||w - w0|| / ||w0||) over all parameters."""
    delta = float(torch.sqrt(sum(((params[k] - params0[k]) ** 2).sum() for k in params)))
    return delta, delta / float(torch.sqrt(sum((p**2).sum() for p in params0.values())))


def train(cfg: dict, on_log: Callable[[int, dict], None] = lambda step, m: None,
          on_step: Callable[[int], None] = lambda step: None,
          on_checkpoint: Callable[[dict], None] = lambda snapshot: None, resume: dict | None = None,
          on_params: Callable[[int, dict], None] = lambda step, params: None, params_every: int | None = None,
          device: str = "cpu") -> Result:
    """Train one trial. Every train.checkpoint_every updates `on_checkpoint` receives a snapshot (steps, t,
    params, optimizer state, batch-sampler RNG state); `resume=snapshot` continues from it with the same
    numbers as an uninterrupted run. Every `params_every` updates (and before the first) `on_params` sees the
    parameters, for measurements along the trajectory such as the sharpness."""
    tcfg = cfg["train"]
    problem = build_problem(cfg, device)
    data, loss, params0 = problem.data, problem.loss, problem.params0
    optimizer = optim.build(cfg["optim"])
    lr, batch_size, n_train = cfg["optim"]["lr"], cfg["data"]["batch_size"], len(data.x_train)
    gen = torch.Generator().manual_seed(cfg["seed"])

    def batch_loss(params, idx):
        batch = problem.train_batch(idx)
        return problem.batch_loss(problem.predict(params, batch), batch)

    def all_fitted(params) -> bool:
        with torch.no_grad():
            return evaluate(problem, params, data.x_train, data.y_train, problem.f0_train)["unfitted"] == 0

    def metrics(params, steps, t):
        delta, relative = weight_change(params, params0)
        with torch.no_grad():
            tr = evaluate(problem, params, data.x_train, data.y_train, problem.f0_train)
            te = evaluate(problem, params, data.x_test, data.y_test, problem.f0_test)
        return {"train_loss": float(tr["loss"]), "train_error": float(tr["error"]), "test_loss": float(te["loss"]),
                "test_error": float(te["error"]), "n_unfitted": float(tr["unfitted"]),
                "min_margin": float(tr["min_margin"]), "weight_delta": delta, "weight_change": relative,
                "train_time": t, "steps": float(steps)}

    def bad(value: float) -> bool:
        return not math.isfinite(value) or value > tcfg["divergence_loss"]

    params, state, steps, t = dict(params0), optimizer.init(params0), 0, 0.0
    if resume is not None:
        params, state, steps, t = resume["params"], resume["opt_state"], resume["steps"], resume["t"]
        gen.set_state(resume["rng"])
    outcome, started, every = "max_steps", time.monotonic(), tcfg["checkpoint_every"]
    if params_every and steps == 0:
        on_params(0, params)
    while steps < tcfg["max_steps"]:
        on_step(steps + 1)
        idx = torch.randperm(n_train, generator=gen)[:batch_size].to(device)
        grads, value = grad_and_value(batch_loss)(params, idx)
        if bad(float(value)):
            outcome = "diverged"
            break
        if tcfg["stop_when_fitted"] and loss.name == "hinge" and float(value) == 0.0:
            if all_fitted(params):
                outcome = "converged"
                break
        params, state = optimizer.update(params, grads, state)
        steps, t = steps + 1, t + lr
        if params_every and steps % params_every == 0:
            on_params(steps, params)
        if every and steps % every == 0:
            on_checkpoint({"steps": steps, "t": t, "params": params, "opt_state": state, "rng": gen.get_state()})
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
        if tcfg["max_time_s"] is not None and time.monotonic() - started > tcfg["max_time_s"]:
            break

    final = metrics(params, steps, t)
    if outcome != "diverged" and bad(final["train_loss"]):
        outcome = "diverged"
    if steps == 0 or steps % tcfg["log_every"] != 0:  # otherwise these metrics were just logged
        on_log(steps, final)
    return Result(outcome=outcome, steps=steps, metrics=final, params=params)
