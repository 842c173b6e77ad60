"""Packed execution against one trial per process, measured side by side in one run.

The same trials (a digits-sized mean-field MLP 64-128-128-1, hinge loss, B = 16, P = 1024, each member with its
own alpha, lr and seed) are trained three ways, and the throughput is counted in trial-steps per second:
  one at a time   sgdlab's unpacked path (training/loop.py train(): a pack of one), one trial after another;
  processes       N processes sharing the device, each training trials one at a time (what fractional-GPU Ray
                  tasks and Ray Tune trials amount to);
  packed          training/loop.py train_pack() on M members in one process;
  plain vmap      the limit packing chases: a minimal torch.func.vmap loop over the same M members with the same
                  maths and no sgdlab bookkeeping (plain_vmap_rate); `x plain vmap` is packed / plain vmap.
Every trial runs exactly --steps updates (stop_when_fitted off) with one evaluation at the end, one thread
per process. The last part measures how far packed float32 members are from the same trials trained alone
(summation order differs), which is not equality; in float64 the tests hold them to 1e-6.

Goals: CPU >= 2x one-at-a-time with >= 64 members; GPU >= 1000x one-at-a-time and >= 300x the best of 4-16
processes with >= 4096 members.
Run: .venv/bin/python bench/pack_bench.py [--device cuda] [--members 64 256] [--processes 2 4] [--steps 300]
     [--profile]  (where the largest pack's steps spend their time, op by op)
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import time

import torch

from sgdlab.training.loop import Member, train, train_pack

BASE = ["data=digits_parity", "data.n_train=1024", "data.batch_size=16", "model=mlp", "model.depth=2",
        "model.width=128", "loss=hinge", "optim=sgd", "optim.temperature=1e-3", "train.stop_when_fitted=false",
        "train.checkpoint_every=null"]
BASE_CONFIG: dict = {}  # the composed base trial (set in main)


def compose_base(path: str | None) -> dict:
    """The base trial: composed from BASE, or read from a JSON file (a machine without Hydra, such as a GPU box
    with torch only: `--base-config` with a config written by `--write-base-config` elsewhere)."""
    if path:
        return json.loads(open(path).read())
    from sgdlab.config.compose import Composer

    return Composer()(BASE)


def configs(n: int, steps: int, dtype: str = "float32") -> list[dict]:
    """n trials of one shape, each with its own alpha, temperature (lr = T B width) and seed."""
    alphas, temperatures = (1.0, 4.0, 16.0, 64.0), (1e-4, 3e-4, 1e-3)
    out = []
    for i in range(n):
        cfg = copy.deepcopy(BASE_CONFIG)
        cfg["train"].update(max_steps=steps, log_every=steps, dtype=dtype)
        temperature = temperatures[i % 3]
        cfg["optim"].update(temperature=temperature,
                            lr=temperature * cfg["data"]["batch_size"] * cfg["model"]["width"])
        cfg["model"]["alpha"], cfg["seed"] = alphas[i % 4], i
        out.append(cfg)
    return out


def one_at_a_time(cfgs: list[dict], device: str) -> float:
    torch.set_num_threads(1)
    train(cfgs[0], device=device)  # warm-up outside the timed part, as in the other two ways
    started = time.perf_counter()
    for cfg in cfgs:
        train(cfg, device=device)
    return sum(c["train"]["max_steps"] for c in cfgs) / (time.perf_counter() - started)


def _worker(cfgs: list[dict], device: str, start, done) -> None:
    torch.set_num_threads(1)
    train(cfgs[0], device=device)  # warm-up outside the timed part, as a long-lived Ray worker would be
    start.wait()
    for cfg in cfgs:
        train(cfg, device=device)
    done.put(time.perf_counter())


def processes(cfgs: list[dict], n: int, device: str) -> float:
    """n processes, each training its share of cfgs one at a time; throughput from the common start."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(n + 1), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(cfgs[i::n], device, start, done)) for i in range(n)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    ends = [done.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(c["train"]["max_steps"] for c in cfgs) / (max(ends) - began)


def packed(cfgs: list[dict], device: str) -> tuple[float, dict[str, float]]:
    """(trial-steps/s of the whole pack, where its time went): `set-up` until the first step (data, initial
    weights, initial outputs), `steps` from the first step to the start of the last, `end` the last step, the final
    evaluation and the results, and `steady` the trial-steps/s of `steps` alone. A step waits for the device once,
    so the host's clock between steps is the device's pace."""
    torch.set_num_threads(1)
    train_pack([Member(cfg) for cfg in cfgs[:2]], device=device)  # warm-up
    ticks: list[float] = []  # the start of every step
    started = time.perf_counter()
    train_pack([Member(cfg) for cfg in cfgs], device=device, on_tick=lambda: ticks.append(time.perf_counter()))
    ended = time.perf_counter()
    stepping = ticks[-1] - ticks[0]
    parts = {"set-up": ticks[0] - started, "steps": stepping, "end": ended - ticks[-1],
             "steady": len(cfgs) * (len(ticks) - 1) / stepping if stepping > 0 else float("nan")}
    return sum(c["train"]["max_steps"] for c in cfgs) / (ended - started), parts


def plain_vmap_rate(cfgs: list[dict], device: str) -> float:
    """Trial-steps/s of the limit a pack chases: a plain loop of torch.func.vmap(grad) over the members' stacked
    parameters with the same maths (each member's own alpha and lr, a batch of B distinct indices of its own, the
    centred output F = alpha (f(w, x) - f(w0, x)), the hinge loss mean(relu(1 - y F)) / alpha, w -= lr grad) and
    none of sgdlab's bookkeeping (no stopping rules, metrics or snapshots). The members start from one
    initialization (set-up is not timed); the host waits for the device once, after the last step."""
    from torch.func import functional_call, grad, vmap

    from sgdlab.training.problem import build_problem

    torch.set_num_threads(1)
    problem = build_problem(cfgs[0], device=device)
    module, x = problem.module, problem.data.x_train
    y = (2.0 * problem.data.y_train - 1).to(x.dtype)
    members, steps, (n, b) = len(cfgs), cfgs[0]["train"]["max_steps"], (len(x), cfgs[0]["data"]["batch_size"])
    params = {k: v[None].repeat(members, *[1] * v.dim()).clone() for k, v in problem.params0.items()}
    f0 = problem.f0_train[:, 0]
    alpha = torch.tensor([c["model"]["alpha"] for c in cfgs], dtype=x.dtype, device=device)
    lr = torch.tensor([c["optim"]["lr"] for c in cfgs], dtype=x.dtype, device=device)

    def loss(p, idx, a):
        F = a * (functional_call(module, p, (x[idx],))[:, 0] - f0[idx])
        return torch.relu(1 - y[idx] * F).mean() / a

    step_grad = vmap(grad(loss))

    def step(params):
        idx = torch.rand(members, n, device=device).topk(b, dim=1).indices  # B distinct indices per member
        grads = step_grad(params, idx, alpha)
        return {k: v - lr.view(-1, *[1] * (v.dim() - 1)) * grads[k] for k, v in params.items()}

    params = step(params)  # warm-up: torch.func's first call
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        params = step(params)
    synchronize(device)
    return members * steps / (time.perf_counter() - started)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def profile_packed(members: int, device: str, warmup: int = 5, active: int = 20) -> None:
    """The ops of `active` steady steps of a pack of `members` (after `warmup` steps), by their own time on the
    device (on the CPU when the device is the CPU), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile, schedule

    on_cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    torch.set_num_threads(1)
    cfgs = configs(members, warmup + active + 1)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1)) as prof:
        train_pack([Member(cfg) for cfg in cfgs], device=device, on_tick=prof.step)
    print(f"\nprofile: {len(cfgs)} members, {active} steps after {warmup}; times are totals over those steps")
    print(prof.key_averages().table(sort_by="self_device_time_total" if on_cuda else "self_cpu_time_total",
                                    row_limit=20))


def float32_difference(n: int, steps: int, device: str) -> tuple[float, float]:
    """(median, max) over members and metrics of |packed - alone| / |alone|, in float32."""
    cfgs = configs(n, steps)
    alone = [train(cfg, device=device) for cfg in cfgs]
    together = train_pack([Member(cfg) for cfg in cfgs], device=device)
    diffs = [abs(p.metrics[k] - a.metrics[k]) / abs(a.metrics[k])
             for a, p in zip(alone, together) for k in ("train_loss", "test_loss", "weight_change")]
    return statistics.median(diffs), max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--alone", type=int, default=8, help="trials timed one at a time (the rate is per step)")
    parser.add_argument("--base-config", help="JSON file of the base trial config (instead of composing BASE)")
    parser.add_argument("--write-base-config", help="write the composed base trial config to this JSON file, exit")
    parser.add_argument("--profile", action="store_true", help="also profile the ops of the largest pack's steps")
    args = parser.parse_args()
    BASE_CONFIG.update(compose_base(args.base_config))
    if args.write_base_config:
        open(args.write_base_config, "w").write(json.dumps(BASE_CONFIG))
        return

    rows = [("one at a time", 1, one_at_a_time(configs(args.alone, args.steps), args.device))]
    for n in args.processes:
        rows.append((f"{n} processes", n, processes(configs(max(args.alone, 2 * n), args.steps), n, args.device)))
    parts, plain = {}, {}
    for m in args.members:
        rate, parts[m] = packed(configs(m, args.steps), args.device)
        rows.append((f"packed, {m} members", m, rate))
        plain[m] = plain_vmap_rate(configs(m, args.steps), args.device)
        rows.append((f"plain vmap, {m}", m, plain[m]))
    base, best_processes = rows[0][2], max(r[2] for r in rows if "processes" in r[0])
    print(f"\n{args.device}, {args.steps} steps per trial, MLP 64-128-128-1 on {BASE_CONFIG['data']['name']}, "
          f"hinge, B=16, P=1024 (torch threads per process: 1)")
    print(f"{'way':<22}{'trial-steps/s':>15}{'x one-at-a-time':>17}{'x best processes':>18}{'x plain vmap':>14}")
    for name, m, rate in rows:
        limit = f"{rate / plain[m]:>14.2f}" if name.startswith("packed") else ""
        print(f"{name:<22}{rate:>15,.0f}{rate / base:>17.2f}{rate / best_processes:>18.2f}{limit}")
    print(f"\nwhere a pack's time went (s), and its steps alone in trial-steps/s (the plain vmap loop is timed on "
          f"its steps alone too)\n{'members':<10}{'set-up':>9}{'steps':>9}{'end':>9}{'steps alone':>14}"
          f"{'x plain vmap':>14}")
    for m, p in parts.items():
        print(f"{m:<10}{p['set-up']:>9.2f}{p['steps']:>9.2f}{p['end']:>9.2f}{p['steady']:>14,.0f}"
              f"{p['steady'] / plain[m]:>14.2f}")
    median, worst = float32_difference(16, args.steps, args.device)
    print(f"\nfloat32, 16 members: packed vs alone, relative difference of the final train/test loss and weight "
          f"change: median {median:.1e}, max {worst:.1e} (summation order; float64 is tested to 1e-6)")
    if args.profile:
        profile_packed(max(args.members), args.device)


if __name__ == "__main__":
    main()
