"""One training step of a pack: for every member m, the gradient g_m of its batch-mean loss at its batch of this
step, and its pure optimizer update with its own lr_m (training/loop.py calls it once per step, or once per span
of steps run in one compiled call).

How it is computed (the numbers agree up to the order of floating-point operations):
  vmapped   M > 1 members: the per-member gradient-and-update function vmapped over the member dimension;
  direct    a pack of one: the same function called on the member's own tensors, the gradient by
            torch.autograd.grad (vmap and torch.func cost more per call than a small model's step);
  spans     members at the same step in one process on a CPU (a trial alone, or a pack) whose steps left,
            timed one by one after train.compile_after steps, would take REPAY times a compilation (always
            where the process compiled their span already, and with compile_after 0): the steps up to the next
            event (log, checkpoint, parameter hand-out; at most SPAN) in one call of a function compiled by
            torch.compile, a while loop over the vmapped step (torch's while_loop operator, with inductor's C++
            wrapper, so the loop runs in C++: no Python and no dispatch between steps, and a compile time that
            does not grow with the span). Its batches are gathered ahead into a buffer of `rows` steps (at most
            SPAN, the event period and SPAN_BYTES), of which the loop runs the first n (an argument). A member
            whose batch loss is non-finite or above train.divergence_loss keeps the parameters of that step for
            the rest of the span (it stops before that update); the loop reads the span's batch losses afterwards
            (training/loop.py run_span).
            The compiled span takes the batches, not the data set, as arguments, so one compilation serves every
            trial of the same network, loss, optimizer, batch size, dtype and pack size in a process, whatever
            its data, P, seed, alpha or lr (COMPILED); a pack whose members leave needs another (the rule above
            decides again). Compiling takes seconds on a CPU; where torch.compile fails (no C++ compiler) a
            warning says so and the trial goes on uncompiled. Span numbers agree with the step-by-step ones to
            rounding (tests/training/test_step.py).
On W > 1 data-parallel workers the shard gradients are all-reduced between the gradient and the update, so the
two are separate vmapped calls and nothing is compiled.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
from torch._higher_order_ops.while_loop import while_loop
from torch.func import grad_and_value, vmap

from sgdlab.training.distributed import Workers
from sgdlab.training.stacked import only_member, per_member, stacked_one, tree_map

SPAN = 1024  # most steps per compiled call (between two looks of the loop at the members)
SPAN_BYTES = 1 << 26  # most memory of a span's gathered batches
REPAY = 3  # a span is compiled where the steps left, step by step, would take this many times its compilation


class Compiled:
    """This process's compiled spans, {(shape, rows, members, divergence_loss): (span in Python, compiled span)},
    at most `kept` (then all compiled code is dropped, so that dynamo's limit on recompilations is never reached),
    and the seconds its last compilation took (before any: `seconds`, about what this 2-core machine takes)."""

    def __init__(self, kept: int | None = None, seconds: float = 10.0):
        self.spans: dict[tuple, tuple[Callable, Callable]] = {}
        # dynamo compiles a function at most recompile_limit times (then runs it uncompiled): as many are kept
        self.kept, self.seconds = kept or torch._dynamo.config.recompile_limit, seconds

    def get(self, key: tuple, build: Callable[[], tuple[Callable, Callable]]) -> tuple[Callable, Callable]:
        if key not in self.spans:
            if len(self.spans) >= self.kept:
                torch.compiler.reset()
                self.spans.clear()
            self.spans[key] = build()
        return self.spans[key]


COMPILED = Compiled()


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
                 y: torch.Tensor, batch_size: int, compile_after: int | None, divergence_loss: float,
                 periods: list[int | None], spans_allowed: bool = True, shape: tuple = ()):
        self.workers, self.x, self.y, self.batch_size, self.shape = workers, x, y, batch_size, shape
        self.compile_after, self.divergence_loss, self.spans_allowed = compile_after, divergence_loss, spans_allowed
        self.period = math.gcd(*(p for p in periods if p))
        self.member_rows: dict[int, torch.Tensor] = {}  # (members, 1) row indices of f(w0, x), by pack size
        self.keys: dict[int, tuple] = {}  # of the compiled spans (COMPILED), by pack size
        by_autograd, by_func = autograd_grad_and_value(member_loss), grad_and_value(member_loss, argnums=1)
        self.gradients, self.update = per_member(by_func, alone=by_autograd), per_member(member_update)
        self.vmapped, self.direct = vmap(fused(by_func, member_update)), fused(by_autograd, member_update)

    def batches(self, f0: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y and f(w0, x) at the indices idx (..., members, B) of every member: shapes (..., members, B, ...)."""
        if f0.shape[0] not in self.member_rows:
            self.member_rows[f0.shape[0]] = torch.arange(f0.shape[0], device=idx.device).view(-1, 1)
        return self.x[idx], self.y[idx], f0[self.member_rows[f0.shape[0]], idx]

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

    def span_steps(self, pack, seconds_per_step: float) -> int:
        """Steps of the next compiled span of `pack`, or 0 (step by step): spans run in one process on a CPU for
        members at the same step that compile (`compiles`, from the seconds a step by step costs now), up to the
        next event or the last step of the member with the fewest left, at most `rows`. (Spans on a GPU are not
        tested yet: steps run one by one there.)"""
        if self.compile_after is None or not self.spans_allowed or self.workers.size > 1 or self.x.device.type != "cpu":
            return 0
        steps, members = int(pack.steps[0]), len(pack.live)
        if members > 1 and not (pack.steps == steps).all():
            return 0
        if not self.compiles(members, steps, int(pack.max_steps.max()) - steps, seconds_per_step):
            return 0
        return min(self.rows(members), self.period - steps % self.period, int(pack.max_steps.min()) - steps)

    def rows(self, members: int) -> int:
        """Steps of a span's batch buffer: at most SPAN, the event period, and SPAN_BYTES of gathered batches
        (x, y and f(w0, x) of B examples of each member a step; f(w0, x) counted as one output)."""
        step_bytes = members * self.batch_size * (self.x[0].numel() + 2) * self.x.element_size()
        return max(1, min(SPAN, self.period, SPAN_BYTES // step_bytes))

    def span(self, pack, idx: torch.Tensor):
        """(params, state, batch losses (steps, members)) after the steps at the batches `idx` (steps, members, B)
        in one compiled call. The first call of a span compiles it: its seconds are kept (COMPILED.seconds)."""
        n, rows, key = len(idx), self.rows(len(pack.live)), self._key(len(pack.live))
        padded = torch.cat([idx, idx[-1:].expand(rows - n, *idx.shape[1:])]) if n < rows else idx.contiguous()
        x, y, f0 = self.batches(pack.f0_train, padded)  # contiguous, as compiled
        fresh = key not in COMPILED.spans
        eager, compiled = COMPILED.get(key, self._build)
        args = (pack.alpha, pack.lr, pack.params, pack.state, torch.tensor(n, device=x.device), x, y, f0)
        try:
            started = time.perf_counter()
            params, state, losses = compiled(*args)
            if fresh:
                COMPILED.seconds = time.perf_counter() - started
        except Exception as exc:  # torch.compile's failures are those of its toolchain (e.g. no C++ compiler)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"train.compile_after: torch.compile failed ({type(exc).__name__}: {first_line}); "
                          "the trial goes on uncompiled")
            self.compile_after = None  # span_steps: no more spans for this trial
            params, state, losses = eager(*args)
        return params, state, losses[:n]

    def compiles(self, members: int, steps_done: int, steps_left: int, seconds_per_step: float) -> bool:
        """Whether `members` at steps_done with up to steps_left to go run in compiled spans (train.compile_after):
        never with null; always with 0; where this process holds their compiled span already; else once past
        compile_after steps if the steps left, at seconds_per_step one by one, would take REPAY times the
        process's last compilation (a span runs 1.5-4x faster than steps one by one: bench/step_bench.py)."""
        if self.compile_after is None:
            return False
        if self.compile_after == 0 or self._key(members) in COMPILED.spans:
            return True
        return steps_done >= self.compile_after and steps_left * seconds_per_step > REPAY * COMPILED.seconds

    def _key(self, members: int) -> tuple:
        if members not in self.keys:
            self.keys[members] = self.shape, self.rows(members), members, self.divergence_loss
        return self.keys[members]

    def _build(self) -> tuple[Callable, Callable]:
        """(span in Python, span compiled with inductor's C++ wrapper)."""
        eager, run = (span(self.vmapped, self.divergence_loss, loop) for loop in (python_while, while_loop))
        return eager, torch.compile(run, dynamic=False, options={"cpp_wrapper": True})
