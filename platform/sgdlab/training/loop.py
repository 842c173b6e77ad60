"""The training loop: M trials of one shape trained together with torch.func.vmap, in one process or on W
data-parallel workers (training/distributed.py); one trial is a pack of one, one process a world of one.

Members share the data, the architecture, the batch size, the optimizer type, the loss and the dtype; each has
its own lr, alpha, seed (initialization and batch order), step count and stopping point. For member m, each step
draws a fresh batch of B distinct training points (training/sampler.py: a function of m's `seed` and step only),
takes the gradient of the batch-mean loss of F = alpha_m (f(w_m) - f(w0_m)) (on W workers: each its shard of the
batch, the gradients averaged) and applies the pure optimizer update with lr_m. Training time is
t_m = sum of lr_m over m's steps. Members never interact: every operation is per member, so a member's numbers
do not depend on the others (up to the order of floating-point sums).

Stopping, per member (`stop_outcomes`, checked in this order):
  error      the member's own on_step callback raised (fault injection): only that member stops;
  diverged   the batch loss or a logged full loss is non-finite or above train.divergence_loss;
  converged  every training point is fitted (train.stop_when_fitted; for the hinge loss this is checked exactly:
             whenever a batch has zero loss, which is necessary for a fitted training set and the only case in
             which the update is zero) or the full training loss is <= train.loss_threshold (at log steps);
  max_steps  train.max_steps updates (more when they do not reach t = train.min_t: pack.step_budget), or
             train.max_time_s of wall time (for the whole pack).
A stopped member leaves the pack (its parameters frozen at its stop step); its final metrics are those at its
own stop step and go to its `on_end`. Metrics on the full train and test sets go to `on_log` at step 0, every
train.log_every steps and at the end. Every train.checkpoint_every steps `on_checkpoint` receives a snapshot of
everything that determines the rest of the member's run; `resume` continues from one bit for bit (CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from sgdlab.training.distributed import ALONE, Workers, check_batch
from sgdlab.training.pack import PackState, Shared, metrics, set_metrics, set_up
from sgdlab.training.stacked import take, tree_map


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
    blocked_steps: int = 0  # of its steps, those run in compiled spans (training/step.py)


@dataclass
class Stop:
    outcome: str
    logged: dict | None = None  # the metrics just logged at the stop step, if any
    error: BaseException | None = None


class StepClock:
    """Seconds per step of a pack trained step by step, for each pack size (members) it has had; the first
    WARM_UP steps at a size (first calls, imports) are not counted, and a size with fewer than TIMED counted
    steps has no estimate (0)."""

    WARM_UP, TIMED = 4, 16

    def __init__(self):
        self.steps: dict[int, int] = {}
        self.seconds: dict[int, float] = {}  # of the counted steps

    def add(self, members: int, seconds: float) -> None:
        self.steps[members] = self.steps.get(members, 0) + 1
        if self.steps[members] > self.WARM_UP:
            self.seconds[members] = self.seconds.get(members, 0.0) + seconds

    def seconds_per_step(self, members: int) -> float:
        counted = self.steps.get(members, 0) - self.WARM_UP
        return self.seconds[members] / counted if counted >= self.TIMED else 0.0


def stop_outcomes(tcfg: dict, *, loss=None, full_set: bool = False, unfitted=None, steps=None, max_steps=None,
                  elapsed: float | None = None) -> dict[int, str]:
    """The stopping rules: {row: outcome} for the members that stop now (arguments are arrays of one entry per
    member; one left out is not checked). In order: 'diverged' when `loss` is non-finite or above
    train.divergence_loss; 'converged' when `unfitted` == 0 with train.stop_when_fitted (NaN: not measured), or
    when a `full_set` loss is <= train.loss_threshold; 'max_steps' when steps >= max_steps or `elapsed` (wall
    seconds of the pack) > train.max_time_s."""
    rules = []
    if loss is not None:
        rules.append(("diverged", ~np.isfinite(loss) | (loss > tcfg["divergence_loss"])))
        if full_set and tcfg["loss_threshold"] is not None:
            rules.append(("converged", loss <= tcfg["loss_threshold"]))
    if unfitted is not None and tcfg["stop_when_fitted"]:
        rules.append(("converged", np.asarray(unfitted) == 0))
    if steps is not None:
        out_of_time = elapsed is not None and tcfg["max_time_s"] is not None and elapsed > tcfg["max_time_s"]
        rules.append(("max_steps", (np.asarray(steps) >= np.asarray(max_steps)) | out_of_time))
    stopping: dict[int, str] = {}
    for outcome, mask in rules:  # in the order of the rules: the first that applies wins
        if mask.any():
            for r in np.flatnonzero(mask).tolist():
                stopping.setdefault(r, outcome)
    return stopping


def train(cfg: dict, device: str = "cpu", **callbacks) -> Result:
    """Train one trial (a pack of one); an exception in its callbacks propagates."""
    (result,) = train_pack([Member(cfg, **callbacks)], device)
    if result.error is not None:
        raise result.error
    return result


def train_pack(members: list[Member], device: str = "cpu", on_tick: Callable[[], None] = _noop,
               workers: Workers = ALONE) -> list[Result]:
    """Train the members together; returns their results in order (each also passed to its on_end). on_tick()
    runs once per step for the whole pack (heartbeats). On W workers every rank calls this with the same members
    (the same configs and snapshots) and gets the same results. Per-member work in a step is done only for the
    members that need it (a callback, a log, a checkpoint, a stop), so a step costs O(1) Python calls."""
    check_batch(members[0].cfg["data"]["batch_size"], workers.size)
    shared, pack = set_up([m.cfg for m in members], [m.resume for m in members], device, workers,
                          members[0].params_every)
    pack.hooked = [r for r, i in enumerate(pack.live) if members[i].on_step is not None]
    tcfg, results, stops = shared.cfg["train"], [None] * len(members), {}
    for r in np.flatnonzero(pack.steps >= pack.max_steps).tolist():  # resumed at their last step
        stops[r] = Stop("max_steps")
    hand_out_params(shared, pack, members, first=True)
    retire(shared, pack, members, stops, results)
    log_metrics(shared, pack, members, first=True)
    started, clock = time.monotonic(), StepClock()
    while pack.live:
        on_tick()
        # One step of every member, or a compiled span of steps (training/step.py), where the steps left would
        # take long enough one by one (as timed so far) to repay its compilation.
        count = 0 if pack.hooked else shared.step.span_steps(pack, clock.seconds_per_step(len(pack.live)))
        if count:
            run_span(shared, pack, members, stops, results, count)
        else:
            size, begun = len(pack.live), time.perf_counter()
            run_step(shared, pack, members, stops, results)
            clock.add(size, time.perf_counter() - begun)
        if not pack.live:
            break
        # Parameters (in-training probes), full-set metrics every log_every steps, then snapshots (checkpoints):
        # a snapshot follows the metrics of its step, so the records hold the history up to every snapshot.
        hand_out_params(shared, pack, members)
        logged = log_metrics(shared, pack, members)
        hand_out_snapshots(shared, pack, members)
        # The stopping rules on the full-set metrics, then on steps and wall time.
        if logged:
            rows = list(logged)
            loss = np.array([logged[r]["train_loss"] for r in rows])
            unfitted = np.array([logged[r]["n_unfitted"] for r in rows])
            for j, outcome in stop_outcomes(tcfg, loss=loss, full_set=True, unfitted=unfitted).items():
                stops[rows[j]] = Stop(outcome, logged[rows[j]])
        # The wall-time limit is read on rank 0's clock (a broadcast), so that every rank stops at the same step.
        elapsed = None if tcfg["max_time_s"] is None else workers.first(time.monotonic() - started, device)
        for r, outcome in stop_outcomes(tcfg, steps=pack.steps, max_steps=pack.max_steps, elapsed=elapsed).items():
            stops.setdefault(r, Stop(outcome, logged.get(r)))
        retire(shared, pack, members, stops, results)
    return results


def run_step(shared: Shared, pack: PackState, members: list[Member], stops: dict[int, Stop], results: list) -> None:
    """One step of every member: its own on_step callback (fault injection: a member whose callback raises stops
    alone, with 'error'), the gradient of its batch loss (averaged over the workers, each its shard of the batch)
    and its optimizer update with its own lr; members whose batch loss diverged, or whose (hinge) batch loss is
    zero on a fitted training set, stop before the update."""
    for r in pack.hooked:
        try:
            members[pack.live[r]].on_step(int(pack.steps[r]) + 1)
        except Exception as exc:
            stops[r] = Stop("error", error=exc)
    idx = shared.workers.shard(shared.batches(pack.seed, pack.steps))
    params, state, batch_loss = shared.step(pack, idx)
    batch_loss = batch_loss.cpu().numpy()  # the step's one wait for the device
    unfitted = unfitted_where_zero_loss(shared, pack, batch_loss)
    for r, outcome in stop_outcomes(shared.cfg["train"], loss=batch_loss, unfitted=unfitted).items():
        stops.setdefault(r, Stop(outcome))
    if stops:  # stopped members leave without the update: their parameters are those of their stop step
        kept = [r for r in range(len(pack.live)) if r not in stops]
        (params, state), batch_loss = take((params, state), kept), batch_loss[kept]
        retire(shared, pack, members, stops, results)
        if not pack.live:
            return
    # The update takes effect; t_m += lr_m. Parameters that moved need their fit checked again.
    pack.params, pack.state = params, state
    pack.fit_checked &= batch_loss == 0
    pack.t = pack.t + pack.lr64
    pack.steps += 1


def run_span(shared: Shared, pack: PackState, members: list[Member], stops: dict[int, Stop], results: list,
              count: int) -> None:
    """`count` steps of every member in one compiled call (training/step.py), batches drawn ahead, and
    run_step's stopping rules applied to the span's batch losses afterwards, with the same stop steps:
      diverged   at the first step whose batch loss is non-finite or above train.divergence_loss: the span kept
                 the parameters of that step;
      converged  (train.stop_when_fitted, hinge loss; spans run only where a zero gradient is no update) the
                 training set is checked at the end of the span if a zero-loss step followed the member's last
                 update: the parameters are still those of that update, and a fitted set stops the member there,
                 as a check after every step does at the first zero-loss step after it. (A set fitted earlier would
                 have given every later batch zero loss: no update could have followed.)
    t = sum of lr over the steps taken, added one step at a time as run_step adds it."""
    first = pack.steps.copy()
    idx = shared.batches.block(pack.seed, pack.steps, count)
    pack.params, pack.state, losses = shared.step.span(pack, idx)
    losses, tcfg = losses.cpu().numpy(), shared.cfg["train"]  # (count, members)
    bad = ~np.isfinite(losses) | (losses > tcfg["divergence_loss"])
    taken = np.where(bad.any(0), bad.argmax(0), count)  # updates applied before a divergence
    moved = (losses != 0) & (np.arange(count)[:, None] < taken)
    last = np.where(moved.any(0), count - moved[::-1].argmax(0), 0)  # steps up to the last update
    for r in np.flatnonzero(taken < count).tolist():
        stops[r] = Stop("diverged")
    if tcfg["stop_when_fitted"] and shared.loss_name == "hinge":
        due = [r for r in range(len(pack.live)) if taken[r] == count and last[r] < count
               and not (pack.fit_checked[r] and last[r] == 0)]
        for r, m in zip(due, set_metrics(shared, pack, due, "train") if due else []):
            if m["unfitted"] == 0:
                stops[r], taken[r] = Stop("converged"), last[r]
        pack.fit_checked &= last == 0
        pack.fit_checked[due] = True
    t = np.add.accumulate(np.concatenate([pack.t.cpu().numpy()[None], np.tile(pack.lr64.cpu().numpy(), (count, 1))]))
    pack.t = torch.as_tensor(t[taken, np.arange(len(taken))], device=pack.t.device)
    pack.steps, pack.blocked = first + taken, pack.blocked + taken
    retire(shared, pack, members, stops, results)


def unfitted_where_zero_loss(shared: Shared, pack: PackState, batch_loss: np.ndarray) -> np.ndarray | None:
    """Unfitted training points of the members whose hinge batch loss is zero (NaN for the others): a zero batch
    loss is necessary for a fitted training set, so only then is the whole set checked, and (pack.fit_checked)
    not again while the parameters have not moved since the last check. The stop step is the one of a check after
    every step. None when the rule is off (train.stop_when_fitted false, or another loss)."""
    if not (shared.cfg["train"]["stop_when_fitted"] and shared.loss_name == "hinge"):
        return None
    unfitted, zero = np.full(len(batch_loss), np.nan), np.flatnonzero((batch_loss == 0) & ~pack.fit_checked).tolist()
    if zero:
        unfitted[zero] = [m["unfitted"] for m in set_metrics(shared, pack, zero, "train")]
        pack.fit_checked[zero] = shared.still_at_zero_gradient
    return unfitted


def hand_out_params(shared: Shared, pack: PackState, members: list[Member], first: bool = False) -> None:
    """on_params(step, params) of the members at a multiple of params_every (first: before any update)."""
    if shared.params_every:
        due = pack.steps == 0 if first else pack.steps % shared.params_every == 0
        for r in np.flatnonzero(due).tolist():
            members[pack.live[r]].on_params(int(pack.steps[r]), take(pack.params, r))


def hand_out_snapshots(shared: Shared, pack: PackState, members: list[Member]) -> None:
    """on_checkpoint(snapshot) of the members at a multiple of checkpoint_every: steps, t, params, optimizer state."""
    if shared.checkpoint_every:
        for r in np.flatnonzero(pack.steps % shared.checkpoint_every == 0).tolist():
            members[pack.live[r]].on_checkpoint({"steps": int(pack.steps[r]), "t": float(pack.t[r]),
                                                 "params": take(pack.params, r), "opt_state": take(pack.state, r)})


def log_metrics(shared: Shared, pack: PackState, members: list[Member], first: bool = False) -> dict[int, dict]:
    """Full-set metrics of the members at a multiple of log_every (first: of those starting at step 0, the starting
    point), passed to their on_log; {row: metrics}."""
    rows = np.flatnonzero(pack.steps == 0 if first else pack.steps % shared.log_every == 0).tolist()
    logged = dict(zip(rows, metrics(shared, pack, rows))) if rows else {}
    for r, m in logged.items():
        members[pack.live[r]].on_log(int(m["steps"]), m)
    return logged


def retire(shared: Shared, pack: PackState, members: list[Member], stops: dict[int, Stop], results: list) -> None:
    """End the members in `stops` with their final metrics at their own step (a final loss that is not finite
    makes the outcome 'diverged'), and drop them from the pack."""
    if not stops:
        return
    rows = sorted(stops)
    need = [r for r in rows if stops[r].logged is None]
    fresh = dict(zip(need, metrics(shared, pack, need))) if need else {}
    final_params = tree_map(lambda x: x.cpu(), take(pack.params, rows))  # one transfer for all of them
    for j, r in enumerate(rows):
        i, stop, steps = pack.live[r], stops[r], int(pack.steps[r])
        final, outcome = stop.logged or fresh[r], stop.outcome
        if outcome not in ("diverged", "error") and stop_outcomes(shared.cfg["train"],
                                                                  loss=np.array([final["train_loss"]])):
            outcome = "diverged"
        if stop.logged is None and steps % shared.log_every != 0:
            members[i].on_log(steps, final)  # otherwise these metrics were just logged
        results[i] = Result(outcome, steps, final, tree_map(lambda x: x[j].clone(), final_params), stop.error,
                            int(pack.blocked[r]))
        members[i].on_end(results[i])
    pack.keep([r for r in range(len(pack.live)) if r not in stops])
    pack.hooked = [r for r, i in enumerate(pack.live) if members[i].on_step is not None]
    stops.clear()

