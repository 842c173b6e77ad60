"""One training step of a pack: for every member m, the gradient g_m of its batch-mean loss at its batch of this
step, and its pure optimizer update with its own lr_m (training/loop.py calls it once per step, or once per span
of steps run in one compiled call).

How it is computed (the numbers agree up to the order of floating-point operations):
  vmapped   M > 1 members: the per-member gradient-and-update function vmapped over the member dimension;
  direct    a pack of one: the same function called on the member's own tensors, the gradient by
            torch.autograd.grad (vmap and torch.func cost more per call than a small model's step);
  spans     a pack of one in one process, once it has done train.compile_after steps and has at least as many
            left, or from its start where the process compiled its span for an earlier trial: the steps up to
            the next event (log, checkpoint, parameter hand-out; at most SPAN) in one call of a function
            compiled by torch.compile, a while loop over the vmapped step (torch's while_loop operator, with
            inductor's C++ wrapper, so the loop runs in C++: no Python and no dispatch between steps, and a
            compile time that does not grow with the span). Its batches are gathered ahead into a buffer of
            `rows` = min(SPAN, event period) steps, of which the loop runs the first n (an argument). A member
            whose batch loss is non-finite or above train.divergence_loss keeps the parameters of that step for
            the rest of the span (it stops before that update); the loop reads the span's batch losses afterwards
            (training/loop.py run_span).
            The compiled span takes the batches, not the data set, as arguments, so one compilation serves every
            trial of the same network, loss, optimizer, batch size and dtype in a process, whatever its data,
            P, seed, alpha or lr (COMPILED). Compiling takes seconds on a CPU; where torch.compile fails (no C++
            compiler) a warning says so and the trial goes on uncompiled. Span numbers agree with the direct ones
            to rounding (tests/training/test_step.py).
On W > 1 data-parallel workers the shard gradients are all-reduced between the gradient and the update, so the
two are separate vmapped calls and nothing is compiled.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch._higher_order_ops.while_loop import while_loop
from torch.func import grad_and_value, vmap

from sgdlab.training.distributed import Workers
from sgdlab.training.stacked import only_member, per_member, stacked_one, tree_map

SPAN = 1024  # most steps per compiled call (between two looks of the loop at the members)
CACHED = 8  # compiled spans kept in a process: {(shape, rows, members, divergence_loss): (span, compiled span)}
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


def python_while(more, body, carry):
    """torch's while_loop operator as plain Python: carry = body(*carry) while more(*carry)."""
    while more(*carry):
        carry = body(*carry)
    return carry


def span(step, limit: float, loop=while_loop):
    """(alpha, lr, params, state, n, x, y, f0) -> (params, state, batch losses of shape (rows, members)): the first
    n steps of the vmapped `step` at the batches x, y, f0 of shape (rows, members, B, ...), in the while `loop`
    (the losses of the rows not run are zero). A member whose batch loss is non-finite or above `limit` keeps the
    parameters and state it had before that step from then on."""
    def run(alpha, lr, params, state, n, x, y, f0):
        def more(i, params, state, live, losses):
            return i < n

        def one_step(i, params, state, live, losses):
            at = i.view(1)
            batch = (t.index_select(0, at)[0] for t in (x, y, f0))
            new_params, new_state, loss = step(alpha, lr, params, state, *batch)
            live = live & torch.isfinite(loss) & (loss <= limit)
            keep = lambda new, old: torch.where(live.view(-1, *(1,) * (new.dim() - 1)), new, old)  # noqa: E731
            return (i + 1, tree_map(keep, new_params, params), tree_map(keep, new_state, state), live,
                    losses.index_copy(0, at, loss[None]))

        start = (torch.zeros((), dtype=torch.int64, device=x.device), params, state,
                 torch.ones(len(alpha), dtype=torch.bool, device=x.device),
                 torch.zeros(len(x), len(alpha), dtype=x.dtype, device=x.device))
        _, params, state, _, losses = loop(more, one_step, start)
        return params, state, losses

    return run


def fused(grad_fn, update_fn):
    """(alpha, lr, params, state, x, y, f0 of a batch) -> (params, state, batch loss) of one member."""
    def member_step(alpha, lr, params, state, x, y, f0):
        grads, value = grad_fn(alpha, params, x, y, f0)
        params, state = update_fn(lr, params, grads, state)
        return params, state, value

    return member_step


class Step:
    """step(pack, idx) -> (params, state, batch losses) of every member of `pack` (stacked along dim 0) after one
    step at its batch of training indices `idx` (members, B / W); the pack itself is left as it is.
    span(pack, idx) -> (params, state, batch losses (steps, members)) after the `span_steps(pack)` steps at idx
    (steps, members, B). member_loss(alpha, params, x, y, f0) is a member's batch-mean loss; `shape` names
    everything its compiled span depends on besides the arguments (network, loss, optimizer, batch size, dtype,
    device); `periods` are those of the loop's events (log_every, checkpoint_every, params_every)."""

    def __init__(self, member_loss: Callable, member_update: Callable, workers: Workers, x: torch.Tensor,
                 y: torch.Tensor, compile_after: int | None, divergence_loss: float, periods: list[int | None],
                 spans_allowed: bool = True, shape: tuple = ()):
        self.workers, self.x, self.y, self.shape = workers, x, y, shape
        self.compile_after, self.divergence_loss, self.spans_allowed = compile_after, divergence_loss, spans_allowed
        self.period = math.gcd(*(p for p in periods if p))
        self.rows = min(SPAN, self.period)  # steps of a span's batch buffer
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

    def span_steps(self, pack) -> int:
        """Steps of the next compiled span of `pack`, or 0 (step by step): spans run for a pack of one in one
        process that compiles (`compiles`), up to the next event or the trial's last step, at most `rows`."""
        steps, limit = int(pack.steps[0]), int(pack.max_steps[0])
        alone = self.workers.size == 1 and len(pack.live) == 1 and self.spans_allowed
        if not (alone and self.compiles(steps, limit)):
            return 0
        return min(self.rows, self.period - steps % self.period, limit - steps)

    def span(self, pack, idx: torch.Tensor):
        """(params, state, batch losses (steps, members)) after the steps at the batches `idx` (steps, members, B)
        in one compiled call."""
        n = len(idx)
        padded = torch.cat([idx, idx[-1:].expand(self.rows - n, *idx.shape[1:])]) if n < self.rows else idx
        x, y, f0 = self.batches(pack.f0_train, padded)
        eager, compiled = self._compiled(len(pack.live))
        args = (pack.alpha, pack.lr, pack.params, pack.state, torch.tensor(n, device=x.device), x, y, f0)
        if self.compile_after is None:  # compiling failed before
            params, state, losses = eager(*args)
        else:
            try:
                params, state, losses = compiled(*args)
            except Exception as exc:  # torch.compile's failures are those of its toolchain (e.g. no C++ compiler)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(f"train.compile_after: torch.compile failed ({type(exc).__name__}: {first_line}); "
                              "the trial goes on uncompiled")
                self.compile_after = None
                params, state, losses = eager(*args)
        return params, state, losses[:n]

    def compiles(self, steps_done: int, max_steps: int) -> bool:
        """Whether a pack of one runs in spans: from its first step where this process holds its compiled span
        already, else once past train.compile_after steps with at least as many left to do (compiling costs as
        much as some ten thousand uncompiled steps); never with compile_after null."""
        if self.compile_after is None:
            return False
        return self._key(1) in COMPILED or steps_done >= self.compile_after <= max_steps - steps_done

    def _key(self, members: int) -> tuple:
        return self.shape, self.rows, members, self.divergence_loss

    def _compiled(self, members: int) -> tuple[Callable, Callable]:
        """(span in Python, span compiled with inductor's C++ wrapper) of this shape and pack size, from this process's
        COMPILED if there. When CACHED shapes are held, compiled code is dropped first, so that no limit on
        recompilations is ever reached."""
        key = self._key(members)
        if key not in COMPILED:
            if len(COMPILED) >= CACHED:
                torch.compiler.reset()
                COMPILED.clear()
            eager, run = (span(self.vmapped, self.divergence_loss, loop) for loop in (python_while, while_loop))
            COMPILED[key] = eager, torch.compile(run, dynamic=False, options={"cpp_wrapper": True})
        return COMPILED[key]
