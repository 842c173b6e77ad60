"""The training loop: M trials of one shape trained together with torch.func.vmap; one trial is a pack of one.

Members share the data, the architecture, the batch size, the optimizer type, the loss and the dtype; each has
its own lr, alpha, seed (initialization and batch order), step count and stopping point. For member m, each step
draws a fresh batch of B distinct training points (training/sampler.py: a function of m's `seed` and step only),
takes the gradient of the batch-mean loss of F = alpha_m (f(w_m) - f(w0_m)) and applies the pure optimizer
update with lr_m. Training time is t_m = sum of lr_m over m's steps. Members never interact: every operation is
per member, so a member's numbers do not depend on the others (up to the order of floating-point sums).

Stopping, per member, checked in this order:
  error      the member's own on_step callback raised (fault injection): only that member stops;
  diverged   the batch loss or a logged full loss is non-finite or above train.divergence_loss;
  converged  every training point is fitted (train.stop_when_fitted; for the hinge loss this is checked exactly:
             whenever a batch has zero loss, which is necessary for a fitted training set and the only case in
             which the update is zero) or the full training loss is <= train.loss_threshold (at log steps);
  max_steps  train.max_steps updates, or train.max_time_s of wall time (for the whole pack).
A stopped member is removed from the pack (its parameters frozen at its stop step); its final metrics are those
at its own stop step and go to its `on_end`. Metrics on the full train and test sets go to `on_log` every
train.log_every steps and at the end. Every train.checkpoint_every steps `on_checkpoint` receives a snapshot of
everything that determines the rest of the member's run; `resume` continues from one bit for bit (CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.func import grad_and_value, vmap

from sgdlab.training import models, optim
from sgdlab.training.sampler import batch_indices
from sgdlab.training.losses import Loss
from sgdlab.training.problem import DTYPES, build_problem, centred, load_data

# Memory of the activations of one evaluation chunk (members x examples) of full-set outputs and metrics.
EVAL_BYTES = {"cpu": 1 << 27, "cuda": 1 << 30}


def _noop(*args) -> None:
    return None


@dataclass
class Member:
    """One trial of a pack and its callbacks. on_step(step), if given, runs before each update (raising stops only
    this member, with outcome 'error'); on_params(step, params) runs every `params_every` steps and before the
    first (params_every must be the same for all members of a pack)."""

    cfg: dict
    on_log: Callable[[int, dict], None] = _noop
    on_step: Callable[[int], None] | None = None
    on_checkpoint: Callable[[dict], None] = _noop
    on_end: Callable[["Result"], None] = _noop
    on_params: Callable[[int, dict], None] = _noop
    params_every: int | None = None
    resume: dict | None = None


@dataclass
class Result:
    outcome: str  # converged | diverged | max_steps | error
    steps: int
    metrics: dict[str, float]
    params: dict[str, torch.Tensor]
    error: BaseException | None = field(default=None, repr=False)


def _set_metrics(loss: Loss, F: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": loss.mean(F, y), "error": loss.error(F, y).double().mean(),
            "unfitted": (~loss.fitted(F, y)).sum(), "min_margin": loss.margin(F, y).min()}


def train(cfg: dict, device: str = "cpu", **callbacks) -> Result:
    """Train one trial (a pack of one); an exception in its callbacks propagates."""
    (result,) = train_pack([Member(cfg, **callbacks)], device)
    if result.error is not None:
        raise result.error
    return result


def _map(fn, tree, *others):
    """fn applied leaf by leaf to nested dicts and tuples of tensors (parameters, optimizer states, outputs)."""
    if isinstance(tree, dict):
        return {k: _map(fn, v, *(o[k] for o in others)) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, *leaves) for leaves in zip(tree, *others))
    return fn(tree, *others)


def _take(tree, rows):
    """Members at `rows` (a list) of a stacked tree, or one member (an int) as its own copy."""
    if isinstance(rows, int):
        return _map(lambda x: x[rows].clone(), tree)
    index = torch.tensor(rows, dtype=torch.long)
    return _map(lambda x: x[index.to(x.device)], tree)


def _per_member(fn, alone=None):
    """fn vmapped over the leading (member) dimension of its arguments, the first a tensor. A pack of one calls
    `alone` (default fn) directly: the same operations without vmap's cost per call (about a millisecond, as
    much as a small model's step)."""
    batched, alone = vmap(fn), alone or fn

    def call(*args):
        if len(args[0]) > 1:  # the first argument is a tensor with one entry per member
            return batched(*args)
        return _map(lambda x: x.unsqueeze(0), alone(*_map(lambda x: x[0], args)))

    return call


def _autograd_grad_and_value(loss_fn):
    """(grad of loss_fn w.r.t. its second argument, a dict of tensors; its value) with torch.autograd: the same
    numbers as torch.func.grad_and_value(loss_fn, argnums=1), at about half its cost per call for one trial."""
    def call(first, params, *rest):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
            value = loss_fn(first, leaves, *rest)
            grads = torch.autograd.grad(value, list(leaves.values()), materialize_grads=True)
        return dict(zip(leaves, grads)), value.detach()

    return call


def train_pack(members: list[Member], device: str = "cpu", on_tick: Callable[[], None] = _noop) -> list[Result]:
    """Train the members together; returns their results in order (each also passed to its on_end).
    on_tick() runs once per step for the whole pack (heartbeats); per-member work in a step is done only for
    the members that need it (a callback, a log, a checkpoint, a stop), so a step costs O(1) Python calls."""
    cfg = members[0].cfg
    tcfg, loss_name, batch_size = cfg["train"], cfg["loss"]["name"], cfg["data"]["batch_size"]
    data = load_data(cfg, device)
    problem = build_problem(cfg, device, data, initial_outputs=False)  # the network the members share
    f, n_train, dtype = problem.f, len(data.x_train), DTYPES[tcfg["dtype"]]
    optimizer = optim.build(cfg["optim"])
    log_every, checkpoint_every, params_every = tcfg["log_every"], tcfg["checkpoint_every"], members[0].params_every
    eval_rows = EVAL_BYTES.get(torch.device(device).type, EVAL_BYTES["cpu"]) // (
        data.x_train.element_size() * problem.saved_per_example())  # member x example rows per chunk

    # The pack: per-member tensors stacked along dim 0, in the order of `live` (the members still training).
    # Initial parameters and optimizer states are made at once for all members (a member's initial parameters
    # depend on its seed only); resumed members then take their snapshots' values.
    per_member = lambda key: [m.cfg[key[0]][key[1]] if len(key) == 2 else m.cfg[key[0]] for m in members]  # noqa
    params0 = models.init_params(problem.module, per_member(("seed",)), dtype, device)
    params, state = _map(torch.clone, params0), _per_member(optimizer.init)(params0)
    steps, t = [0] * len(members), [0.0] * len(members)
    for i, m in enumerate(members):
        if m.resume is not None:
            _map(lambda stacked, saved: stacked[i].copy_(saved), (params, state),
                 (m.resume["params"], m.resume["opt_state"]))
            steps[i], t[i] = m.resume["steps"], m.resume["t"]
    alpha = torch.tensor(per_member(("model", "alpha")), dtype=dtype, device=device)

    def initial_outputs(x: torch.Tensor) -> torch.Tensor:
        """f(w0_m, x) for every member m (zero when model.center is false): F is centred on it."""
        chunk, scale = max(1, eval_rows // len(members)), 1.0 if cfg["model"]["center"] else 0.0
        with torch.no_grad():
            return scale * torch.cat([_per_member(lambda a, p: f(p, x[i:i + chunk]))(alpha, params0)
                                      for i in range(0, len(x), chunk)], dim=1)

    pack = {"params": params, "state": state, "params0": params0, "alpha": alpha,
            "lr": torch.tensor(per_member(("optim", "lr")), dtype=dtype, device=device),
            "f0_train": initial_outputs(data.x_train), "f0_test": initial_outputs(data.x_test),
            "seed": torch.tensor(per_member(("seed",)), device=device),
            "step": torch.tensor(steps, device=device),  # updates done
            "t": torch.tensor(t, dtype=torch.float64, device=device),  # sum of lr, in float64 whatever the dtype
            "lr64": torch.tensor(per_member(("optim", "lr")), dtype=torch.float64, device=device)}
    # Step counts are also kept on the host (in the order of `live`): conditions on steps (logs, checkpoints,
    # max_steps) then cost no transfer from the device, and a step waits for the device only once.
    host = {"step": np.array(steps), "max_steps": np.array(per_member(("train", "max_steps")))}
    live = list(range(len(members)))
    hooked: list[int] = []  # rows of the members with an on_step callback
    results: list[Result | None] = [None] * len(members)

    def member_loss(a, p, f0, idx):
        return Loss(loss_name, a).mean(centred(f, p, data.x_train[idx], f0[idx], a), data.y_train[idx])

    def member_update(rate, p, g, s):
        return optim.build({**cfg["optim"], "lr": rate}).update(p, g, s)

    step_fn = _per_member(grad_and_value(member_loss, argnums=1), alone=_autograd_grad_and_value(member_loss))
    update_fn = _per_member(member_update)

    def rows_where(mask: np.ndarray) -> list[int]:
        return np.flatnonzero(mask).tolist()

    def set_metrics(rows: list[int], x, y, f0_key: str) -> list[dict[str, float]]:
        """Loss, error, unfitted count and minimum margin on a whole set, for the members at `rows`."""
        sub = _take({k: pack[k] for k in ("params", "alpha", f0_key)}, rows)
        chunk = max(1, eval_rows // len(rows))
        with torch.no_grad():
            F = torch.cat([_per_member(lambda a, p, f0: centred(f, p, x[i:i + chunk], f0[i:i + chunk], a))(
                sub["alpha"], sub["params"], sub[f0_key]) for i in range(0, len(x), chunk)], dim=1)
            out = _per_member(lambda a, Fm: _set_metrics(Loss(loss_name, a), Fm, y))(sub["alpha"], F)
        values = {k: v.tolist() for k, v in out.items()}
        return [{k: v[j] for k, v in values.items()} for j in range(len(rows))]

    def metrics(rows: list[int]) -> list[dict[str, float]]:
        """Everything logged: full-set metrics, ||w - w0|| and ||w - w0|| / ||w0||, t and the step count."""
        train_set = set_metrics(rows, data.x_train, data.y_train, "f0_train")
        test_set = set_metrics(rows, data.x_test, data.y_test, "f0_test")
        sub = _take({k: pack[k] for k in ("params", "params0", "step", "t")}, rows)
        squares = lambda tree: sum((v.flatten(1) ** 2).sum(1) for v in tree.values())  # noqa: E731
        deltas = torch.sqrt(squares({k: sub["params"][k] - sub["params0"][k] for k in sub["params"]}))
        norms0 = torch.sqrt(squares(sub["params0"]))
        return [{"train_loss": tr["loss"], "train_error": tr["error"], "test_loss": te["loss"],
                 "test_error": te["error"], "n_unfitted": tr["unfitted"], "min_margin": tr["min_margin"],
                 "weight_delta": delta, "weight_change": delta / norm0, "train_time": t_, "steps": float(step)}
                for tr, te, delta, norm0, t_, step in zip(train_set, test_set, deltas.tolist(), norms0.tolist(),
                                                           sub["t"].tolist(), sub["step"].tolist())]

    def bad(value: float) -> bool:
        return not math.isfinite(value) or value > tcfg["divergence_loss"]

    stops: dict[int, tuple[str, dict | None, BaseException | None]] = {}  # row -> (outcome, logged metrics, error)

    def retire() -> None:
        """End the members in `stops` with their final metrics at their own step, and drop them from the pack."""
        nonlocal pack, host, live, hooked
        if not stops:
            return
        rows = sorted(stops)
        need = [r for r in rows if stops[r][1] is None]
        fresh = dict(zip(need, metrics(need))) if need else {}
        at = dict(zip(rows, host["step"][rows].tolist()))
        final_params = _map(lambda x: x.cpu(), _take(pack["params"], rows))  # one transfer for all of them
        for j, r in enumerate(rows):
            i, (outcome, logged, error) = live[r], stops[r]
            final = logged or fresh[r]
            if outcome not in ("diverged", "error") and bad(final["train_loss"]):
                outcome = "diverged"
            if logged is None and (at[r] == 0 or at[r] % log_every != 0):
                members[i].on_log(at[r], final)  # otherwise these metrics were just logged
            results[i] = Result(outcome, at[r], final, _map(lambda x: x[j].clone(), final_params), error)
            members[i].on_end(results[i])
        keep = [r for r in range(len(live)) if r not in stops]
        pack, live = _take(pack, keep), [live[r] for r in keep]
        host = {k: v[keep] for k, v in host.items()}
        hooked = [r for r, i in enumerate(live) if members[i].on_step is not None]
        stops.clear()

    for r in rows_where(host["step"] >= host["max_steps"]):  # resumed at their last step
        stops[r] = ("max_steps", None, None)
    if params_every:
        for r in rows_where(host["step"] == 0):
            members[live[r]].on_params(0, _take(pack["params"], r))
    hooked = [r for r, i in enumerate(live) if members[i].on_step is not None]
    retire()
    started = time.monotonic()
    while live:
        on_tick()
        if hooked:
            current = host["step"][hooked].tolist()
            for r, step in zip(hooked, current):
                try:
                    members[live[r]].on_step(step + 1)
                except Exception as exc:  # this member's own callback (fault injection): only it stops
                    stops[r] = ("error", None, exc)
        idx = batch_indices(pack["seed"], pack["step"], n_train, batch_size)
        grads, values = step_fn(pack["alpha"], pack["params"], pack["f0_train"], idx)
        # The step's one wait for the device: 1 = diverged, 2 = a zero batch loss (hinge), per member.
        events = (~torch.isfinite(values) | (values > tcfg["divergence_loss"])).to(torch.uint8)
        if tcfg["stop_when_fitted"] and loss_name == "hinge":
            events = events + 2 * (values == 0).to(torch.uint8)
        events = events.cpu().numpy()
        for r in rows_where(events & 1):
            stops.setdefault(r, ("diverged", None, None))
        if tcfg["stop_when_fitted"] and loss_name == "hinge":
            zero_loss = [r for r in rows_where(events & 2) if r not in stops]
            if zero_loss:  # a zero batch loss is necessary for a fitted training set: check the whole set
                for r, fit in zip(zero_loss, set_metrics(zero_loss, data.x_train, data.y_train, "f0_train")):
                    if fit["unfitted"] == 0:
                        stops[r] = ("converged", None, None)
        if stops:  # stopped members leave before the update: their parameters are those of their stop step
            grads = _take(grads, [r for r in range(len(live)) if r not in stops])
            retire()
            if not live:
                break
        pack["params"], pack["state"] = update_fn(pack["lr"], pack["params"], grads, pack["state"])
        pack["step"], pack["t"] = pack["step"] + 1, pack["t"] + pack["lr64"]
        host["step"] += 1
        step = host["step"]
        if params_every:
            for r in rows_where(step % params_every == 0):
                members[live[r]].on_params(int(step[r]), _take(pack["params"], r))
        if checkpoint_every:
            for r in rows_where(step % checkpoint_every == 0):
                members[live[r]].on_checkpoint({"steps": int(step[r]), "t": float(pack["t"][r]),
                                                "params": _take(pack["params"], r),
                                                "opt_state": _take(pack["state"], r)})
        log_rows = rows_where(step % log_every == 0)
        logged = dict(zip(log_rows, metrics(log_rows))) if log_rows else {}
        for r, m in logged.items():
            members[live[r]].on_log(int(m["steps"]), m)
            if bad(m["train_loss"]):
                stops[r] = ("diverged", m, None)
            elif (tcfg["stop_when_fitted"] and m["n_unfitted"] == 0) or (
                    tcfg["loss_threshold"] is not None and m["train_loss"] <= tcfg["loss_threshold"]):
                stops[r] = ("converged", m, None)
        timed_out = tcfg["max_time_s"] is not None and time.monotonic() - started > tcfg["max_time_s"]
        for r in (range(len(live)) if timed_out else rows_where(step >= host["max_steps"])):
            stops.setdefault(r, ("max_steps", logged.get(r), None))
        retire()
    return results
