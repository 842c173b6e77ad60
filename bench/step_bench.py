"""Steps per second of one small trial through sgdlab's train(), beside the plainest loops that do the same maths;
and of packed trials beside a plain torch.func.vmap loop. Measured side by side in one run, one thread.

Trials (issue 17's anchors):
  perceptron  f = w.x / sqrt(d), d = 32, teacher-perceptron data, P = 1024, B = 8, hinge, alpha = 128;
  mlp         mean-field MLP 64-128-128-1 (tanh), digits parity, P = 1024, B = 16, hinge.
Every loop takes B distinct training indices per step (its own sampler), computes F = alpha (f(w, x) - f(w0, x))
on them, the hinge loss mean(relu(1 - y F)) / alpha, its gradient, and w -= lr grad; no evaluation until the end.
  sgdlab      training/loop.py train(), stop_when_fitted off, and on (then resumed from a snapshot taken late in
              training, where most batches have zero loss: the case the stopping check must make cheap); both
              step by step (train.compile_after null);
  spans       the same in compiled spans (train.compile_after = 0: the steps between two logs in one compiled
              call), fit check off and on, timed after the first span, which compiles (its seconds are printed);
  torch       a plain eager loop: torch.randperm(P)[:B], autograd, an in-place update;
  numpy       (perceptron) the same in numpy, with the gradient written by hand.
  limit       (MLP) its FLOPs per step, 6 B (64 x 128 + 128 x 128 + 128 x 1) (forward, and twice that
              backward), over the rate of a 1024 x 1024 float32 matmul measured in the same run: the arithmetic
              bound of one thread; and the MLP step's matmuls alone at their shapes (mlp_matmuls_rate), the
              most any code calling the BLAS for them reaches.
Every sgdlab rate is timed from its log at step 1024 (after set-up, the first span's compilation and first
calls) to its last, logs every 1024 steps.
Packed: train_pack() on M MLP members against a plain loop of torch.func.vmap(grad) over the same M members
(pack_bench.plain_vmap_rate).
Sampler: one member's batch of B = 8 distinct indices: sgdlab's counter-based draw for one step
(training/sampler.py batch_indices), per step as the loop draws it (Batches: many steps at a time), beside
torch.randperm(P)[:B] and the O(P) smallest-keys rule (sgdlab's rule before numerics version 2).

Run: .venv/bin/python bench/step_bench.py [--steps 5000] [--members 64 256 1024]   (make bench-step)
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch

from pack_bench import plain_vmap_rate  # bench/ is the script's folder
from sgdlab.config.compose import Composer
from sgdlab.training.loop import Member, train, train_pack
from sgdlab.training.problem import build_problem
from sgdlab.training.sampler import Batches, batch_indices, smallest_keys

TRIALS = {
    "perceptron": ["data=teacher_perceptron", "data.n_train=1024", "data.dim=32", "data.batch_size=8",
                   "model=perceptron", "model.alpha=128", "loss=hinge", "optim=sgd", "optim.temperature=0.05"],
    "mlp": ["data=digits_parity", "data.n_train=1024", "data.batch_size=16", "model=mlp", "model.depth=2",
            "model.width=128", "model.alpha=1", "loss=hinge", "optim=sgd", "optim.temperature=1e-3"],
}
# Where the stop_when_fitted measurement starts: late enough that many batches have zero loss.
LATE = {"perceptron": 30_720, "mlp": 2_048}
LOG = 1024  # steps between logs (a span)


def trial(name: str, steps: int, fitted_stop: bool, spans: bool = False) -> dict:
    return Composer()([*TRIALS[name], f"train.max_steps={steps}", f"train.log_every={LOG}",
                       f"train.stop_when_fitted={str(fitted_stop).lower()}", "train.checkpoint_every=null",
                       f"train.compile_after={0 if spans else 'null'}"])


def sgdlab_rate(cfg: dict, resume: dict | None = None) -> tuple[float, int, float]:
    """(steps/s of train(), steps done, seconds to its second log): timed from its second log (step 1024 past its
    start) to its last; a run that fits before its third log is timed from its start."""
    logs: list[tuple[int, float]] = []
    started = time.perf_counter()
    (result,) = train_pack([Member(cfg, resume=resume, on_log=lambda step, m: logs.append((step,
                                                                                          time.perf_counter())))])
    begin = resume["steps"] if resume else 0
    (first, at), (last, end) = logs[1] if len(logs) > 2 else (begin, started), logs[-1]
    return (last - first) / (end - at), result.steps - begin, at - started


def mlp_flops(cfg: dict) -> float:
    """FLOPs of one SGD step of the MLP: 2 B fan_in fan_out per layer forward, twice that backward."""
    widths = [64, *[cfg["model"]["width"]] * cfg["model"]["depth"], 1]
    return 6 * cfg["data"]["batch_size"] * sum(a * b for a, b in zip(widths, widths[1:]))


def matmul_rate() -> float:
    """FLOP/s of a 1024 x 1024 float32 matmul on this thread, best of five."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 1024**3 / best


def mlp_matmuls_rate(cfg: dict, steps: int) -> float:
    """Steps/s of the MLP step's matmuls alone at their shapes (B x 64 x 128, B x 128 x 128, B x 128 x 1 forward;
    the weight and input gradients backward), each torch.mm into a preallocated output: the most that any code
    calling the BLAS for them can reach, whatever it fuses around them."""
    b, widths = cfg["data"]["batch_size"], [64, *[cfg["model"]["width"]] * cfg["model"]["depth"], 1]
    acts = [torch.randn(b, w) for w in widths]  # inputs of each layer, and the output
    weights = [torch.randn(i, o) for i, o in zip(widths, widths[1:])]
    calls = []
    for layer, w in enumerate(weights):
        x, y = acts[layer], acts[layer + 1]
        calls.append((x, w, torch.empty_like(y)))  # forward: x W
        calls.append((x.T, y, torch.empty_like(w)))  # weight gradient: x^T delta
        if layer:
            calls.append((y, w.T, torch.empty_like(x)))  # input gradient: delta W^T
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            for a, c, out in calls:
                torch.mm(a, c, out=out)
        best = min(best, time.perf_counter() - started)
    return steps / best


def snapshot_at(cfg: dict, step: int) -> dict:
    """A resumable snapshot of the trial at `step` (stop_when_fitted off up to there)."""
    cfg = copy.deepcopy(cfg)
    cfg["train"].update(max_steps=step, checkpoint_every=step, stop_when_fitted=False)
    saved = {}
    train(cfg, on_checkpoint=lambda state: saved.update(state))
    return saved


def plain_torch_rate(cfg: dict, steps: int) -> float:
    """A plain eager loop on the same network (its nn.Module holding the initial weights), data, alpha, lr and
    batch size: forward on B distinct points, backward, an in-place update."""
    problem = build_problem(cfg)
    module = problem.module
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(problem.params0[name])
    x, y = problem.data.x_train, (2.0 * problem.data.y_train - 1).to(problem.data.x_train.dtype)
    f0, alpha, lr, n, b = problem.f0_train[:, 0], cfg["model"]["alpha"], cfg["optim"]["lr"], len(x), \
        cfg["data"]["batch_size"]
    weights = list(module.parameters())
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randperm(n)[:b]
        F = alpha * (module(x[idx])[:, 0] - f0[idx])
        loss = torch.relu(1 - y[idx] * F).mean() / alpha
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for p, g in zip(weights, grads):
                p.sub_(lr * g)
    return steps / (time.perf_counter() - started)


def plain_numpy_rate(cfg: dict, steps: int) -> float:
    """The perceptron in numpy: F = alpha (x (w - w0) / sqrt(d)), gradient by hand."""
    problem = build_problem(cfg)
    x = problem.data.x_train.double().numpy().reshape(len(problem.data.x_train), -1)
    y = 2.0 * problem.data.y_train.numpy() - 1
    w0 = problem.params0["weight"].double().numpy()[0]
    w, (n, d) = w0.copy(), x.shape
    alpha, lr, b, rng = cfg["model"]["alpha"], cfg["optim"]["lr"], cfg["data"]["batch_size"], np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(steps):
        idx = rng.choice(n, b, replace=False)
        xb = x[idx]
        active = (1 - y[idx] * alpha * (xb @ (w - w0)) / math.sqrt(d)) > 0
        w -= lr * -(y[idx] * active) @ xb / (b * math.sqrt(d))
    return steps / (time.perf_counter() - started)


def packed_configs(members: int, steps: int, spans: bool) -> list[dict]:
    base = trial("mlp", steps, False, spans=spans)
    out = []
    for i in range(members):
        cfg = copy.deepcopy(base)
        cfg["seed"] = i
        out.append(cfg)
    return out


def sgdlab_packed_rate(cfgs: list[dict]) -> float:
    """Trial-steps/s of train_pack's steps: the pack run for S and for 2 S steps, each timed from the first
    member's log at step 0 (after set-up) to its end, M S over the difference (the final evaluation cancels), the
    median of three such pairs; a first run warms up (torch.func's first use, the span's compilation)."""
    steps = cfgs[0]["train"]["max_steps"]

    def seconds(max_steps: int) -> float:
        run = [copy.deepcopy(c) for c in cfgs]
        for c in run:
            c["train"].update(max_steps=max_steps, log_every=2 * steps)
        logs: list[float] = []
        train_pack([Member(run[0], on_log=lambda step, m: logs.append(time.perf_counter())),
                    *[Member(c) for c in run[1:]]])
        return time.perf_counter() - logs[0]

    seconds(steps)
    differences = sorted(seconds(2 * steps) - seconds(steps) for _ in range(3))
    return len(cfgs) * steps / differences[1]  # the median of three: this machine is shared


def microseconds(fn, calls: int = 2000) -> float:
    """Best of three timings of `calls` calls, per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / calls


def sampler_table() -> None:
    seed, step = torch.tensor([3]), torch.tensor([17])
    print("\none member's batch of B = 8 distinct indices (microseconds per step; ratio = randperm / sgdlab's loop)")
    print(f"{'P':<10}{'one step':>10}{'loop':>8}{'randperm':>10}{'O(P) keys':>10}{'ratio':>8}")
    for n in (1024, 60000):
        ours = microseconds(lambda: batch_indices(seed, step, n, 8))
        batches, steps = Batches(n, 8), np.array([17])

        def next_batch():
            batches(seed, steps)
            steps[0] += 1

        drawn_ahead = microseconds(next_batch)
        plain = microseconds(lambda: torch.randperm(n)[:8])
        keys = microseconds(lambda: smallest_keys(seed, step, n, 8))
        print(f"{n:<10}{ours:>10.1f}{drawn_ahead:>8.1f}{plain:>10.1f}{keys:>10.1f}{plain / drawn_ahead:>8.2f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20480, help="a multiple of 1024")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each single-trial loop; the best counts")
    parser.add_argument("--packed-steps", type=int, default=100)
    parser.add_argument("--members", type=int, nargs="*", default=[64, 256, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"one trial, {args.steps} steps, one thread, best of {args.repeats} (steps/s; fit: train.stop_when_fitted"
          " off / on; spans: compiled spans of 1024 steps; compile: seconds to the second log, mostly compiling)")
    print(f"{'trial':<12}{'step':>8}{'fit on':>8}{'spans':>9}{'fit on':>8}{'torch':>7}{'numpy':>7}{'limit':>8}"
          f"{'sp./torch':>10}{'sp.on/np':>9}{'sp./limit':>10}{'compile':>8}")
    for name in TRIALS:
        off, spans = trial(name, args.steps, False), trial(name, args.steps, False, spans=True)
        on, spans_on = (trial(name, LATE[name] + args.steps, True, spans=b) for b in (False, True))
        late = snapshot_at(on, LATE[name])
        train(trial(name, 50, False))  # warm-up: imports, first-call costs
        compile_s = sgdlab_rate(spans)[2]  # the first compilation in this process
        # This machine is shared: each rate is the best of `repeats` runs, taken in turn.
        rates = {key: 0.0 for key in ("off", "on", "spans", "spans_on", "torch", "numpy", "limit")}
        for _ in range(args.repeats):
            rates["off"] = max(rates["off"], sgdlab_rate(off)[0])
            rates["on"] = max(rates["on"], sgdlab_rate(on, resume=late)[0])
            rates["spans"] = max(rates["spans"], sgdlab_rate(spans)[0])
            rates["spans_on"] = max(rates["spans_on"], sgdlab_rate(spans_on, resume=late)[0])
            rates["torch"] = max(rates["torch"], plain_torch_rate(off, args.steps))
            if name == "perceptron":
                rates["numpy"] = max(rates["numpy"], plain_numpy_rate(off, args.steps))
            else:
                rates["limit"] = max(rates["limit"], matmul_rate() / mlp_flops(off))
        r = {**rates, "numpy": rates["numpy"] or float("nan"), "limit": rates["limit"] or float("nan")}
        print(f"{name:<12}{r['off']:>8.0f}{r['on']:>8.0f}{r['spans']:>9.0f}{r['spans_on']:>8.0f}"
              f"{r['torch']:>7.0f}{r['numpy']:>7.0f}{r['limit']:>8.0f}{r['spans'] / r['torch']:>10.2f}"
              f"{r['spans_on'] / r['numpy']:>9.2f}{r['spans'] / r['limit']:>10.2f}{compile_s:>7.1f}s",
              flush=True)
    mlp, limit = trial("mlp", args.steps, False), matmul_rate() / mlp_flops(trial("mlp", args.steps, False))
    matmuls = mlp_matmuls_rate(mlp, args.steps)
    print(f"the MLP step's {3 * mlp['model']['depth'] + 2} matmuls alone at their shapes: {matmuls:.0f} steps/s = "
          f"{matmuls / limit:.2f} x its limit line ({limit:.0f})", flush=True)
    print(f"\npacked MLP members, {args.packed_steps} steps (trial-steps/s; step: one by one, spans: compiled "
          "spans; ratio = sgdlab / plain vmap)")
    print(f"{'members':<12}{'step':>10}{'spans':>10}{'vmap':>10}{'step/vmap':>10}{'spans/vmap':>11}")
    for members in args.members:
        one_by_one = sgdlab_packed_rate(packed_configs(members, args.packed_steps, spans=False))
        spans = sgdlab_packed_rate(packed_configs(members, args.packed_steps, spans=True))
        vmap_rate = plain_vmap_rate(packed_configs(members, args.packed_steps, spans=False), "cpu")
        print(f"{members:<12}{one_by_one:>10.0f}{spans:>10.0f}{vmap_rate:>10.0f}{one_by_one / vmap_rate:>10.2f}"
              f"{spans / vmap_rate:>11.2f}", flush=True)
    sampler_table()


if __name__ == "__main__":
    main()
