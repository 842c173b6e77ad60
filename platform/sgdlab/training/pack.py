"""A pack's state and what the training loop (training/loop.py) computes on it besides the step: the set-up
(data, initial parameters and outputs, resume) and the full-set metrics. Per-member tensors are stacked along
dim 0; functions of one member are vmapped over that dimension.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from sgdlab.training import models, optim
from sgdlab.training.data import Dataset
from sgdlab.training.distributed import Workers
from sgdlab.training.losses import Loss
from sgdlab.training.problem import DTYPES, build_problem, centred, load_data
from sgdlab.training.sampler import Batches
from sgdlab.training.stacked import per_member, take, tree_map
from sgdlab.training.step import Step

# Memory of the activations of one evaluation chunk (members x examples) of full-set outputs and metrics.
EVAL_BYTES = {"cpu": 1 << 27, "cuda": 1 << 30}


@dataclass
class Shared:
    """What the members of a pack share: the config (of the first member), data, network, step functions and
    the workers."""

    cfg: dict
    data: Dataset  # on the pack's device, in its dtype
    f: Callable  # f(params, x): the network
    workers: Workers
    eval_rows: int  # member x example rows per evaluation chunk
    step: Step  # (pack, idx) -> (params, state, batch losses) after one step of every member
    batches: Batches  # (seeds, steps) -> (members, B) training indices of their batches
    params_every: int | None  # members' on_params every this many steps

    @property
    def loss_name(self) -> str:
        return self.cfg["loss"]["name"]

    @property
    def still_at_zero_gradient(self) -> bool:
        """Whether a zero gradient leaves a member's parameters exactly as they are (plain SGD)."""
        return optim.build(self.cfg["optim"]).still_at_zero_gradient

    @property
    def n_train(self) -> int:
        return len(self.data.x_train)

    @property
    def batch_size(self) -> int:
        return self.cfg["data"]["batch_size"]

    @property
    def log_every(self) -> int:
        return self.cfg["train"]["log_every"]

    @property
    def checkpoint_every(self) -> int | None:
        return self.cfg["train"]["checkpoint_every"]



TENSORS = ("params", "state", "params0", "alpha", "lr", "lr64", "f0_train", "f0_test", "seed", "t")


@dataclass
class PackState:
    """The members still training: their tensors stacked along dim 0 in the order of `live` (indices of the
    pack's members); step counts are also kept on the host (`steps`), so that conditions on steps cost no
    transfer from the device."""

    params: dict
    state: dict
    params0: dict
    alpha: torch.Tensor
    lr: torch.Tensor
    lr64: torch.Tensor  # lr in float64, for t
    f0_train: torch.Tensor  # f(w0, x) on the training set, (members, n_train, outputs)
    f0_test: torch.Tensor
    seed: torch.Tensor
    t: torch.Tensor  # sum of lr, in float64 whatever the dtype
    steps: np.ndarray  # updates done
    max_steps: np.ndarray
    live: list[int]
    hooked: list[int] = field(default_factory=list)  # rows of the members with an on_step callback
    # Members whose whole training set was checked (some point unfitted) at their current parameters: with plain
    # SGD a zero batch loss leaves the parameters as they are, so the check cannot change until they move again.
    fit_checked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    blocked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # steps run in compiled spans

    def keep(self, rows: list[int]) -> None:
        """Keep only the members at `rows`."""
        for name in TENSORS:
            setattr(self, name, take(getattr(self, name), rows))
        self.steps, self.max_steps, self.live = self.steps[rows], self.max_steps[rows], [self.live[r] for r in rows]
        self.fit_checked, self.blocked = self.fit_checked[rows], self.blocked[rows]


def set_up(configs: list[dict], resumes: list[dict | None], device: str, workers: Workers,
           params_every: int | None) -> tuple[Shared, PackState]:
    """The data and network (shared), every member's initial parameters and optimizer state (a member's initial
    parameters depend on its seed only), the snapshots of resumed members, and f(w0, x) on both sets."""
    cfg = configs[0]
    data = load_data(cfg, device)
    problem = build_problem(cfg, device, data, initial_outputs=False)  # the network the members share
    f, dtype, loss_name = problem.f, DTYPES[cfg["train"]["dtype"]], cfg["loss"]["name"]
    eval_rows = EVAL_BYTES.get(torch.device(device).type, EVAL_BYTES["cpu"]) // (
        data.x_train.element_size() * problem.saved_per_example())

    def member_loss(a, p, x, y, f0):
        return Loss(loss_name, a).mean(centred(f, p, x, f0, a), y)

    def member_update(rate, p, g, s):
        return optim.build({**cfg["optim"], "lr": rate}).update(p, g, s)

    tcfg, still = cfg["train"], optim.build(cfg["optim"]).still_at_zero_gradient
    # A compiled span checks the fit of a hinge trial at its end, which is exact only where a zero gradient is
    # no update.
    fit_rule = tcfg["stop_when_fitted"] and loss_name == "hinge"
    step = Step(member_loss, member_update, workers, data.x_train, data.y_train, cfg["data"]["batch_size"],
                tcfg["compile_after"], tcfg["divergence_loss"],
                [tcfg["log_every"], tcfg["checkpoint_every"], params_every], still or not fit_rule,
                compiled_shape(cfg, data, device))
    shared = Shared(cfg, data, f, workers, eval_rows, step, Batches(len(data.x_train), cfg["data"]["batch_size"]),
                    params_every)
    seeds = [c["seed"] for c in configs]
    params0 = models.init_params(problem.module, seeds, dtype, device)
    params, state = tree_map(torch.clone, params0), per_member(optim.build(cfg["optim"]).init)(params0)
    steps, t = [0] * len(configs), [0.0] * len(configs)
    for i, snapshot in enumerate(resumes):
        if snapshot is not None:
            tree_map(lambda stacked, saved: stacked[i].copy_(saved), (params, state),
                     (snapshot["params"], snapshot["opt_state"]))
            steps[i], t[i] = snapshot["steps"], snapshot["t"]
    alpha = torch.tensor([c["model"]["alpha"] for c in configs], dtype=dtype, device=device)
    lrs = [c["optim"]["lr"] for c in configs]
    initial = lambda x: initial_outputs(shared, params0, alpha, x)  # noqa: E731
    pack = PackState(params, state, params0, alpha, torch.tensor(lrs, dtype=dtype, device=device),
                     torch.tensor(lrs, dtype=torch.float64, device=device), initial(data.x_train),
                     initial(data.x_test), torch.tensor(seeds, device=device),
                     torch.tensor(t, dtype=torch.float64, device=device), np.array(steps),
                     np.array([step_budget(c) for c in configs]), list(range(len(configs))),
                     fit_checked=np.zeros(len(configs), dtype=bool), blocked=np.zeros(len(configs), dtype=np.int64))
    return shared, pack


def compiled_shape(cfg: dict, data: Dataset, device: str) -> tuple:
    """What a compiled span of steps depends on besides its arguments: the network (model config but alpha, the
    input shape, the classes), the loss, the optimizer but its lr, the batch size, the dtype and the device."""
    model = {k: v for k, v in cfg["model"].items() if k != "alpha"}
    optimizer = {k: v for k, v in cfg["optim"].items() if k not in ("lr", "temperature")}
    return (repr(sorted(model.items())), tuple(data.input_shape), data.n_classes, cfg["loss"]["name"],
            repr(sorted(optimizer.items())), cfg["data"]["batch_size"], cfg["train"]["dtype"], str(device))


def step_budget(cfg: dict) -> int:
    """A member's step limit: train.max_steps, or more when that many steps do not reach the training time
    t = lr x steps = train.min_t (then ceil(min_t / lr) steps): a small lr gets the steps its time needs."""
    max_steps, min_t = cfg["train"]["max_steps"], cfg["train"]["min_t"]
    if min_t is None:
        return max_steps
    return max(max_steps, math.ceil(min_t / cfg["optim"]["lr"] * (1 - 1e-12)))


def initial_outputs(shared: Shared, params0: dict, alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(w0_m, x) for every member m (zero when model.center is false): F is centred on it."""
    chunk, scale = max(1, shared.eval_rows // len(alpha)), 1.0 if shared.cfg["model"]["center"] else 0.0
    with torch.no_grad():
        return scale * torch.cat([per_member(lambda a, p: shared.f(p, x[i:i + chunk]))(alpha, params0)
                                  for i in range(0, len(x), chunk)], dim=1)


def _sums(loss: Loss, F: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": loss.per_example(F, y).sum(), "errors": loss.error(F, y).double().sum(),
            "unfitted": (~loss.fitted(F, y)).sum(), "min_margin": loss.margin(F, y).min()}


def set_metrics(shared: Shared, pack: PackState, rows: list[int], which: str) -> list[dict[str, float]]:
    """Mean loss, error rate, unfitted count and minimum margin on the whole train or test set (`which`), for the
    members at `rows`. Each worker evaluates its contiguous slice of the set; sums and minima are all-reduced."""
    x, y = (shared.data.x_train, shared.data.y_train) if which == "train" else (shared.data.x_test, shared.data.y_test)
    n, part, workers = len(x), shared.workers.split(len(x)), shared.workers
    x, y = x[part], y[part]
    sub = take({"params": pack.params, "alpha": pack.alpha,
                "f0": (pack.f0_train if which == "train" else pack.f0_test)[:, part]}, rows)
    chunk = max(1, shared.eval_rows // len(rows))
    with torch.no_grad():
        F = torch.cat([per_member(lambda a, p, f0: centred(shared.f, p, x[i:i + chunk], f0[i:i + chunk], a))(
            sub["alpha"], sub["params"], sub["f0"]) for i in range(0, len(x), chunk)], dim=1)
        out = per_member(lambda a, Fm: _sums(Loss(shared.loss_name, a), Fm, y))(sub["alpha"], F)
    values = {"loss": (workers.sum(out["loss"]) / n).tolist(), "error": (workers.sum(out["errors"]) / n).tolist(),
              "unfitted": workers.sum(out["unfitted"]).tolist(), "min_margin": workers.min(out["min_margin"]).tolist()}
    return [{k: v[j] for k, v in values.items()} for j in range(len(rows))]


def teacher_frame(shared: Shared, params: dict, params0: dict) -> list[dict[str, float]] | None:
    """The perceptron on the teacher task (y = sign(x_1)), in the teacher's frame: w - w0 = w_par e_1 + w_perp,
    logged as w_par, w_perp = ||w_perp||, w_ratio = w_par / ||w_perp|| (the observable ~ P^(1/(1+chi)) of the
    perceptron theory) and w0_norm = ||w0||. None for any other model or data set."""
    if shared.cfg["model"]["name"] != "perceptron" or shared.cfg["data"]["name"] != "teacher_perceptron":
        return None
    delta = (params["weight"] - params0["weight"]).flatten(1)  # (members, d): the readout of one output
    par, perp = delta[:, 0], delta[:, 1:].norm(dim=1)
    norm0 = params0["weight"].flatten(1).norm(dim=1)
    return [{"w_par": a, "w_perp": b, "w_ratio": a / b if b > 0 else math.nan, "w0_norm": c}
            for a, b, c in zip(par.tolist(), perp.tolist(), norm0.tolist())]


def metrics(shared: Shared, pack: PackState, rows: list[int]) -> list[dict[str, float]]:
    """Everything logged: full-set metrics, ||w - w0|| and ||w - w0|| / ||w0||, t and the step count, and for the
    teacher perceptron its teacher-frame observables (teacher_frame)."""
    train_set, test_set = set_metrics(shared, pack, rows, "train"), set_metrics(shared, pack, rows, "test")
    sub = take({"params": pack.params, "params0": pack.params0}, rows)
    squares = lambda tree: sum((v.flatten(1) ** 2).sum(1) for v in tree.values())  # noqa: E731
    deltas = torch.sqrt(squares({k: sub["params"][k] - sub["params0"][k] for k in sub["params"]}))
    norms0 = torch.sqrt(squares(sub["params0"]))
    frame = teacher_frame(shared, sub["params"], sub["params0"]) or [{} for _ in rows]
    return [{"train_loss": tr["loss"], "train_error": tr["error"], "test_loss": te["loss"],
             "test_error": te["error"], "n_unfitted": tr["unfitted"], "min_margin": tr["min_margin"],
             "weight_delta": delta, "weight_change": delta / norm0, "train_time": t_, "steps": float(step), **extra}
            for tr, te, delta, norm0, t_, step, extra in zip(train_set, test_set, deltas.tolist(), norms0.tolist(),
                                                              pack.t[rows].tolist(), pack.steps[rows].tolist(), frame)]
