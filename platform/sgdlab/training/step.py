"""One training step of a pack: for every member m, the gradient g_m of its batch-mean loss at its batch of this
step, and its pure optimizer update with its own lr_m (training/loop.py calls it once per step, or once per span
of compiled blocks of steps).

How it is computed (the numbers agree up to the order of floating-point operations):
  vmapped   M > 1 members: the per-member gradient-and-update function vmapped over the member dimension;
  direct    a pack of one: the same function called on the member's own tensors, the gradient by
            torch.autograd.grad (vmap and torch.func cost more per call than a small model's step);
  blocked   a pack of one in one process, once it has done train.compile_after steps and has at least as many
            left, or from its start where the process compiled its block for an earlier trial: K steps per call
            of a function compiled by torch.compile (the vmapped step unrolled K times),
            which fuses the small kernels and removes the Python and the dispatch between steps. K (block_size)
            divides every event period (log, checkpoint, parameter hand-out), so blocks from a multiple of K never
            cross an event; the loop runs a span of whole blocks up to the next event (at most SPAN steps) with
            its batches gathered ahead, and the few steps before the first multiple of K and after the last whole
            block run direct. A member whose batch loss is non-finite or above train.divergence_loss keeps the
            parameters of that step for the rest of the span (it stops before that update); the loop reads the
            span's batch losses afterwards (training/loop.py run_block).
            The compiled block takes the batches, not the data set, as arguments, so one compilation serves every
            trial of the same network, loss, optimizer, batch size and dtype in a process, whatever its data,
            P, seed, alpha or lr (COMPILED). Compiling takes seconds on a CPU the first time (less from
            inductor's on-disk cache later); where torch.compile fails (no C++ compiler) a warning says so and the
            trial goes on uncompiled. Blocked numbers agree with the direct ones to rounding
            (tests/training/test_step.py).
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

BLOCK = 32  # most steps per compiled block
SPAN = 1024  # most steps per span of blocks (between two looks of the loop at the members)
CACHED = 8  # compiled blocks kept in a process: {(shape, K, members, divergence_loss): (block, compiled block)}
COMPILED: dict[tuple, tuple[Callable, Callable]] = {}


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


def blocked(step, steps: int, limit: float):
    """(alpha, lr, params, state, live, x, y, f0) -> (params, state, live, batch losses of shape (steps, members)):
    `steps` steps of the vmapped `step` at the batches x, y, f0 of shape (steps, members, B, ...). A member not
    `live`, or whose batch loss is non-finite or above `limit`, keeps its parameters and state (from then on)."""
    def block(alpha, lr, params, state, live, x, y, f0):
        losses = []
        for k in range(steps):
            new_params, new_state, loss = step(alpha, lr, params, state, x[k], y[k], f0[k])
            live = live & torch.isfinite(loss) & (loss <= limit)
            keep = lambda new, old: torch.where(live.view(-1, *(1,) * (new.dim() - 1)), new, old)  # noqa: E731
            params, state = tree_map(keep, new_params, params), tree_map(keep, new_state, state)
            losses.append(loss)
        return params, state, live, torch.stack(losses)

    return block


def fused(grad_fn, update_fn):
    """(alpha, lr, params, state, x, y, f0 of a batch) -> (params, state, batch loss) of one member."""
    def member_step(alpha, lr, params, state, x, y, f0):
        grads, value = grad_fn(alpha, params, x, y, f0)
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
    step at its batch of training indices `idx` (members, B / W); the pack itself is left as it is.
    block(pack, idx) the same after the span of `block_steps(pack)` steps at idx (steps, members, B).
    member_loss(alpha, params, x, y, f0) is a member's batch-mean loss; `shape` names everything its compiled
    block depends on besides the arguments (network, loss, optimizer, batch size, dtype, device)."""

    def __init__(self, member_loss: Callable, member_update: Callable, workers: Workers, x: torch.Tensor,
                 y: torch.Tensor, compile_after: int | None, divergence_loss: float, periods: list[int | None],
                 blocks_allowed: bool = True, shape: tuple = ()):
        self.workers, self.x, self.y, self.shape = workers, x, y, shape
        self.compile_after, self.divergence_loss, self.blocks_allowed = compile_after, divergence_loss, blocks_allowed
        self.period, self.steps_per_block = math.gcd(*(p for p in periods if p)), block_size(periods)
        by_autograd, by_func = autograd_grad_and_value(member_loss), grad_and_value(member_loss, argnums=1)
        self.gradients, self.update = per_member(by_func, alone=by_autograd), per_member(member_update)
        self.vmapped, self.direct = vmap(fused(by_func, member_update)), fused(by_autograd, member_update)

    def batches(self, f0: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y and f(w0, x) at the indices idx (..., members, B) of every member: shapes (..., members, B, ...)."""
        members = torch.arange(f0.shape[0], device=idx.device).view(-1, 1)
        return self.x[idx], self.y[idx], f0[members, idx]

    def __call__(self, pack, idx: torch.Tensor):
        x, y, f0 = self.batches(pack.f0_train, idx)
        if self.workers.size > 1:  # gradients, their all-reduce, updates
            grads, values = self.workers.mean(*self.gradients(pack.alpha, pack.params, x, y, f0))
            return (*self.update(pack.lr, pack.params, grads, pack.state), values)
        if len(pack.live) > 1:
            return self.vmapped(pack.alpha, pack.lr, pack.params, pack.state, x, y, f0)
        params, state, value = self.direct(pack.alpha[0], pack.lr[0], {k: v[0] for k, v in pack.params.items()},
                                           only_member(pack.state), x[0], y[0], f0[0])
        return {k: v[None] for k, v in params.items()}, stacked_one(state), value[None]

    def block_steps(self, pack) -> int:
        """Steps of the next span of compiled blocks of `pack`, or 0 (step by step): blocks run for a pack of one
        in one process that compiles (`compiles`), from a multiple of K with a whole block left; a span ends at
        the next event, at the last whole block of the trial's steps, or after SPAN steps."""
        steps, limit, k = int(pack.steps[0]), int(pack.max_steps[0]), self.steps_per_block
        alone = self.workers.size == 1 and len(pack.live) == 1 and self.blocks_allowed
        if not (alone and steps % k == 0 and limit - steps >= k and self.compiles(steps, limit)):
            return 0
        return min(SPAN // k * k, self.period - steps % self.period, (limit - steps) // k * k)

    def block(self, pack, idx: torch.Tensor):
        """(params, state, batch losses (steps, members)) after the span of blocks at the batches `idx`
        (steps, members, B)."""
        x, y, f0 = self.batches(pack.f0_train, idx)
        k, members = self.steps_per_block, len(pack.live)
        eager, compiled = self._compiled(members)
        params, state, live = pack.params, pack.state, torch.ones(members, dtype=torch.bool, device=x.device)
        losses = []
        for j in range(0, len(idx), k):
            args = (pack.alpha, pack.lr, params, state, live, x[j:j + k], y[j:j + k], f0[j:j + k])
            params, state, live, loss = self._call(eager, compiled, args)
            losses.append(loss)
        return params, state, torch.cat(losses)

    def compiles(self, steps_done: int, max_steps: int) -> bool:
        """Whether a pack of one runs in blocks: from its first step where this process holds its compiled block
        already, else once past train.compile_after steps with at least as many left to do (compiling costs as
        much as some ten thousand uncompiled steps); never with compile_after null."""
        if self.compile_after is None:
            return False
        return self._key(1) in COMPILED or steps_done >= self.compile_after <= max_steps - steps_done

    def _compiled(self, members: int) -> tuple[Callable, Callable]:
        """(block, block compiled) of this shape and pack size, from this process's COMPILED if there. When
        CACHED shapes are held, compiled code is dropped first, so that no limit on recompilations is ever
        reached (compiling a graph compiled before, here or in another process, takes a fraction of the time
        from inductor's on-disk cache)."""
        key = self._key(members)
        if key not in COMPILED:
            if len(COMPILED) >= CACHED:
                torch.compiler.reset()
                COMPILED.clear()
            block = blocked(self.vmapped, self.steps_per_block, self.divergence_loss)
            COMPILED[key] = block, torch.compile(block, dynamic=False)
        return COMPILED[key]

    def _key(self, members: int) -> tuple:
        return self.shape, self.steps_per_block, members, self.divergence_loss

    def _call(self, eager: Callable, compiled: Callable, args: tuple):
        """The compiled block at `args`; where torch.compile fails, a warning, and this block and the trial's
        later steps run uncompiled."""
        if self.compile_after is None:  # compiling failed before
            return eager(*args)
        try:
            return compiled(*args)
        except Exception as exc:  # torch.compile's failures are those of its toolchain (e.g. no C++ compiler)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"train.compile_after: torch.compile failed ({type(exc).__name__}: {first_line}); "
                          "the trial goes on uncompiled")
            self.compile_after = None
            return eager(*args)
