"""One training step of a pack: for every member m, the gradient g_m of its batch-mean loss at its batch of this
step, and its pure optimizer update with its own lr_m (training/loop.py calls it once per step).

How it is computed (the numbers agree up to the order of floating-point operations):
  vmapped   M > 1 members: the per-member gradient-and-update function vmapped over the member dimension;
  direct    a pack of one: the same function called on the member's own tensors, the gradient by
            torch.autograd.grad (vmap and torch.func cost more per call than a small model's step);
  compiled  a pack of one in one process, once it has done train.compile_after steps and has at least as many
            left: the vmapped function compiled by torch.compile, which fuses its small kernels and its Python
            away (2-3x the direct rate for the small models). Compiling takes 6-10 s on a CPU the first time
            (0.5 s from inductor's cache later), so only long trials do; where torch.compile fails (no C++
            compiler) a warning says so and the trial goes on uncompiled. Compiled numbers agree with the direct ones to rounding (bit for bit in float64 in
            bench/step_bench.py's trials).
On W > 1 data-parallel workers the shard gradients are all-reduced between the gradient and the update, so the
two are separate vmapped calls and nothing is compiled.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch.func import grad_and_value, vmap

from sgdlab.training.distributed import Workers
from sgdlab.training.stacked import only_member, per_member, stacked_one


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


def fused(grad_fn, update_fn):
    """(alpha, lr, params, state, f0_train, idx) -> (params, state, batch loss) of one member."""
    def member_step(alpha, lr, params, state, f0, idx):
        grads, value = grad_fn(alpha, params, f0, idx)
        params, state = update_fn(lr, params, grads, state)
        return params, state, value

    return member_step


class Step:
    """step(pack, idx) -> (params, state, batch losses) of every member of `pack` (stacked along dim 0) after one
    step at its batch `idx` (members, B / W); the pack itself is left as it is."""

    def __init__(self, member_loss: Callable, member_update: Callable, workers: Workers, compile_after: int | None):
        self.workers, self.compile_after = workers, compile_after
        by_autograd, by_func = autograd_grad_and_value(member_loss), grad_and_value(member_loss, argnums=1)
        self.gradients, self.update = per_member(by_func, alone=by_autograd), per_member(member_update)
        self.vmapped, self.direct = vmap(fused(by_func, member_update)), fused(by_autograd, member_update)
        self.compiled = None

    def __call__(self, pack, idx: torch.Tensor):
        if self.workers.size > 1:  # gradients, their all-reduce, updates
            grads, values = self.workers.mean(*self.gradients(pack.alpha, pack.params, pack.f0_train, idx))
            return (*self.update(pack.lr, pack.params, grads, pack.state), values)
        if len(pack.live) > 1:
            return self.vmapped(pack.alpha, pack.lr, pack.params, pack.state, pack.f0_train, idx)
        if not self.compiles(int(pack.steps[0]), int(pack.max_steps[0])):
            params, state, value = self.direct(pack.alpha[0], pack.lr[0], {k: v[0] for k, v in pack.params.items()},
                                               only_member(pack.state), pack.f0_train[0], idx[0])
            return {k: v[None] for k, v in params.items()}, stacked_one(state), value[None]
        if self.compiled is None:
            self.compiled = self._compile()
        return self.compiled(pack, idx)

    def compiles(self, steps_done: int, max_steps: int) -> bool:
        """Whether a pack of one is past train.compile_after steps with at least as many left to do (compiling
        costs as much as some ten thousand uncompiled steps)."""
        return self.compile_after is not None and steps_done >= self.compile_after <= max_steps - steps_done

    def _compile(self) -> Callable:
        """The vmapped function compiled for this pack's shapes. Compiled code of earlier trials in this process
        is dropped first, so that no limit on recompilations is ever reached (recompiling a graph compiled before,
        here or in another process, takes half a second from inductor's on-disk cache)."""
        torch.compiler.reset()
        compiled = torch.compile(self.vmapped, dynamic=False)

        def call(pack, idx):
            try:
                return compiled(pack.alpha, pack.lr, pack.params, pack.state, pack.f0_train, idx)
            except Exception as exc:  # torch.compile's failures are those of its toolchain (e.g. no C++ compiler)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(f"train.compile_after: torch.compile failed ({type(exc).__name__}: {first_line}); "
                              "the trial goes on uncompiled")
                self.compile_after = None
                return self(pack, idx)

        return call
