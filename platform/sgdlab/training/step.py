"""One training step of a pack: for every member m, the gradient g_m of its batch-mean loss at its batch of this
step, and its pure optimizer update with its own lr_m (training/loop.py calls it once per step, or once per block
of steps).

How it is computed (the numbers agree up to the order of floating-point operations):
  vmapped   M > 1 members: the per-member gradient-and-update function vmapped over the member dimension;
  direct    a pack of one: the same function called on the member's own tensors, the gradient by
            torch.autograd.grad (vmap and torch.func cost more per call than a small model's step);
  blocked   a pack of one in one process, once it has done train.compile_after steps and has at least as many
            left: K steps in one call of a function compiled by torch.compile (the vmapped step unrolled K times,
            its batches drawn ahead), which fuses the small kernels and removes the Python and the dispatch
            between steps. K (block_size) divides every event period (log, checkpoint, parameter hand-out), so a
            block from a multiple of K never crosses an event; the few steps before the first multiple and after
            the last whole block run direct. A member whose batch loss is non-finite or above
            train.divergence_loss keeps the parameters of that step for the rest of the block (it stops before
            that update); the loop reads the block's batch losses afterwards (training/loop.py run_block).
            Compiling takes seconds on a CPU the first time (less from inductor's cache later), so only long
            trials do; where torch.compile fails (no C++ compiler) a warning says so and the trial goes on
            uncompiled. Blocked numbers agree with the direct ones to rounding (tests/training/test_step.py).
On W > 1 data-parallel workers the shard gradients are all-reduced between the gradient and the update, so the
two are separate vmapped calls and nothing is compiled.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch.func import grad_and_value, vmap

from sgdlab.training.distributed import Workers
from sgdlab.training.stacked import only_member, per_member, stacked_one, tree_map

BLOCK = 32  # steps per compiled block


def autograd_grad_and_value(loss_fn):
    """(grad of loss_fn w.r.t. its second argument, a dict of tensors; its value) with torch.autograd: the same
    numbers as torch.func.grad_and_value(loss_fn, argnums=1), at about half its cost per call for one trial."""
    def call(first, params, *rest):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
            value = loss_fn(first, leaves, *rest)
            grads = torch.autograd.grad(value, list(leaves.values()), materialize_grads=True)
        return dict(zip(leaves, grads)), value.detach()

    return call


def blocked(step, steps: int, limit: float, unfitted=None):
    """(alpha, lr, params, state, f0, idx of shape (steps, members, B)) -> (params, state, batch losses of shape
    (steps, members), unfitted): `steps` steps of the vmapped `step`. A member whose batch loss is non-finite or
    above `limit` keeps the parameters and state it had before that step, for the rest of the block. With
    `unfitted` (a member's count of unfitted training points), the counts at the end of the block, else None."""
    counts = vmap(unfitted) if unfitted is not None else None

    def block(alpha, lr, params, state, f0, idx):
        live, losses = torch.ones(len(alpha), dtype=torch.bool, device=alpha.device), []
        for k in range(steps):
            new_params, new_state, loss = step(alpha, lr, params, state, f0, idx[k])
            live = live & torch.isfinite(loss) & (loss <= limit)
            keep = lambda new, old: torch.where(live.view(-1, *(1,) * (new.dim() - 1)), new, old)  # noqa: E731
            params, state = tree_map(keep, new_params, params), tree_map(keep, new_state, state)
            losses.append(loss)
        return params, state, torch.stack(losses), counts(alpha, params, f0) if counts is not None else None

    return block


def fused(grad_fn, update_fn):
    """(alpha, lr, params, state, f0_train, idx) -> (params, state, batch loss) of one member."""
    def member_step(alpha, lr, params, state, f0, idx):
        grads, value = grad_fn(alpha, params, f0, idx)
        params, state = update_fn(lr, params, grads, state)
        return params, state, value

    return member_step


def block_size(periods: list[int | None]) -> int:
    """Steps per block: the largest divisor of every event period (log_every, checkpoint_every, params_every)
    that is at most BLOCK, so that blocks that start at a multiple of it never cross an event."""
    period = math.gcd(*(p for p in periods if p))
    return max(k for k in range(1, BLOCK + 1) if period % k == 0)


class Step:
    """step(pack, idx) -> (params, state, batch losses) of every member of `pack` (stacked along dim 0) after one
    step at its batch `idx` (members, B / W); the pack itself is left as it is. block(pack, idx) the same after
    `block_steps(pack)` steps (a compiled block)."""

    def __init__(self, member_loss: Callable, member_update: Callable, workers: Workers, compile_after: int | None,
                 divergence_loss: float, steps_per_block: int, blocks_allowed: bool = True,
                 member_unfitted: Callable | None = None):
        self.workers, self.compile_after, self.divergence_loss = workers, compile_after, divergence_loss
        self.steps_per_block, self.blocks_allowed = steps_per_block, blocks_allowed
        self.member_unfitted = member_unfitted  # counted at a block's end, for the hinge fit check
        by_autograd, by_func = autograd_grad_and_value(member_loss), grad_and_value(member_loss, argnums=1)
        self.gradients, self.update = per_member(by_func, alone=by_autograd), per_member(member_update)
        self.vmapped, self.direct = vmap(fused(by_func, member_update)), fused(by_autograd, member_update)
        self.compiled_block = None

    def __call__(self, pack, idx: torch.Tensor):
        if self.workers.size > 1:  # gradients, their all-reduce, updates
            grads, values = self.workers.mean(*self.gradients(pack.alpha, pack.params, pack.f0_train, idx))
            return (*self.update(pack.lr, pack.params, grads, pack.state), values)
        if len(pack.live) > 1:
            return self.vmapped(pack.alpha, pack.lr, pack.params, pack.state, pack.f0_train, idx)
        params, state, value = self.direct(pack.alpha[0], pack.lr[0], {k: v[0] for k, v in pack.params.items()},
                                           only_member(pack.state), pack.f0_train[0], idx[0])
        return {k: v[None] for k, v in params.items()}, stacked_one(state), value[None]

    def block_steps(self, pack) -> int:
        """Steps of the next compiled block of `pack`, or 0 (step by step): a block runs for a pack of one in
        one process that compiles (`compiles`), from a multiple of steps_per_block, with a whole block left."""
        steps, limit, k = int(pack.steps[0]), int(pack.max_steps[0]), self.steps_per_block
        alone = self.workers.size == 1 and len(pack.live) == 1 and self.blocks_allowed
        if not (alone and steps % k == 0 and limit - steps >= k and self.compiles(steps, limit)):
            return 0
        if self.compiled_block is None:
            block = blocked(self.vmapped, k, self.divergence_loss, self.member_unfitted)
            self.compiled_block = self._compile(block)
        return k

    def block(self, pack, idx: torch.Tensor):
        """(params, state, batch losses (steps, members), unfitted training points at the end or None) after a
        block at the batches `idx` (steps, members, B)."""
        return self.compiled_block(pack.alpha, pack.lr, pack.params, pack.state, pack.f0_train, idx)

    def compiles(self, steps_done: int, max_steps: int) -> bool:
        """Whether a pack of one is past train.compile_after steps with at least as many left to do (compiling
        costs as much as some ten thousand uncompiled steps)."""
        return self.compile_after is not None and steps_done >= self.compile_after <= max_steps - steps_done

    def _compile(self, block: Callable) -> Callable:
        """`block` compiled for this pack's shapes; where torch.compile fails, a warning, and this block and the
        trial's later steps run uncompiled. Compiled code of earlier trials in this process is dropped first, so
        that no limit on recompilations is ever reached (recompiling a graph compiled before, here or in another
        process, takes a fraction of the time from inductor's on-disk cache)."""
        torch.compiler.reset()
        compiled = torch.compile(block, dynamic=False)

        def call(*args):
            if self.compile_after is None:  # compiling failed before
                return block(*args)
            try:
                return compiled(*args)
            except Exception as exc:  # torch.compile's failures are those of its toolchain (e.g. no C++ compiler)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(f"train.compile_after: torch.compile failed ({type(exc).__name__}: {first_line}); "
                              "the trial goes on uncompiled")
                self.compile_after = None
                return block(*args)

        return call
