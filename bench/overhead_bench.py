"""Cost of the platform around the training, measured side by side in one run.

1. A sweep of 32 trials of about 2 s of compute each, and one of 200 tiny trials, through the real scheduler
   (Ray tasks, MLflow on SQLite): wall time against the trials' own compute divided by the workers, with Ray's
   start-up timed apart (connect, and every worker process started with torch and mlflow imported:
   tasks.warm_up, which `sgdlab sweep` also runs). A trial's own compute is the time of training/loop.py
   train() on its config, no Ray, no MLflow, one thread, in as many processes at once as there are workers
   (the cores are shared as in the sweep). The 200 tiny trials run twice: one trial per task (exec.pack=off)
   and packed as `sgdlab sweep` packs them by default (exec.pack=auto: one pack per worker).
2. MLflow metric values written per second: sgdlab's batched writer vs one log_metric call per value.
3. The share of a trial's time spent logging (every value written through TrialRun, and ending the run), at
   the default train.log_every = 100 and at 10x that rate.

Goals: sweep wall <= 1.2 x compute / workers (+ Ray start-up) for the sweeps as `sgdlab sweep` runs them (the
tiny trials packed; one per task is printed for comparison); >= 5,000 values/s; logging < 5% of a trial.
Run: .venv/bin/python bench/overhead_bench.py [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from sgdlab.config.compose import Composer
from sgdlab.orchestration import runtime
from sgdlab.orchestration.packing import pack_jobs
from sgdlab.orchestration.scheduler import run_trials
from sgdlab.orchestration import tasks
from sgdlab.orchestration.plan import TrialJob
from sgdlab.sweep.expand import expand
from sgdlab.tracking.query import sweep_runs
from sgdlab.tracking.store import client, open_sweep
from sgdlab.tracking.writer import TrialRun
from sgdlab.training.loop import train

BASE = ["model.depth=2", "model.width=64", "data.n_train=512", "data.batch_size=16", "optim.temperature=1e-3",
        "train.stop_when_fitted=false", "train.log_every=100", "train.checkpoint_every=null"]
TINY = ["model.depth=1", "model.width=4", "data.n_train=32", "data.batch_size=8", "optim.temperature=0.01",
        "train.max_steps=20", "train.log_every=10", "train.checkpoint_every=null"]


def calibrate_steps(target_s: float) -> int:
    """max_steps for which one trial takes about target_s here (one thread, as a worker): the time per step
    is the difference of a 600-step and a 200-step run, so that set-up (data, model) is counted once."""
    import torch

    torch.set_num_threads(1)
    composer, times = Composer(), {}
    train(composer(BASE + ["train.max_steps=10"]))  # warm-up: data loading and first calls are not per step
    for steps in (200, 600):
        started = time.perf_counter()
        train(composer(BASE + [f"train.max_steps={steps}"]))
        times[steps] = time.perf_counter() - started
    per_step = (times[600] - times[200]) / 400
    return max(100, int((target_s - times[200] + 200 * per_step) / per_step))


def _time_trials(configs: list[dict]) -> list[float]:
    """Seconds each config takes to train here (after a warm-up: the data set's first load is not a trial's)."""
    import torch

    torch.set_num_threads(1)
    train(configs[0])
    times = []
    for cfg in configs:
        started = time.perf_counter()
        train(cfg)
        times.append(time.perf_counter() - started)
    return times


def own_compute(trials: list, workers: int) -> float:
    """The trials' own compute: seconds of training/loop.py train() on their configs, no Ray, no MLflow, in
    `workers` processes at once (one thread each), so that it is measured under the same sharing of the cores
    as in the sweep."""
    configs = [t.config for t in trials]
    with mp.get_context("spawn").Pool(workers) as pool:
        return sum(sum(part) for part in pool.map(_time_trials, [configs[i::workers] for i in range(workers)]))


def sweep_overhead(uri: str, name: str, trials: list, workers: int, compute: float) -> dict:
    """Run the trials as `sgdlab sweep` does and compare the wall time with their own compute / workers."""
    handle = open_sweep(uri, name)
    jobs = pack_jobs([TrialJob(t.trial_id, t.config, 1, t.trial_id) for t in trials], workers)
    started = time.perf_counter()
    run_trials(jobs, handle, max_in_flight=2 * workers)
    wall = time.perf_counter() - started
    runs = sweep_runs(uri, name)
    assert sum(r.status == "FINISHED" for r in runs) == len(trials), [
        (r.status, r.error) for r in runs if r.status != "FINISHED"]
    return {"sweep": name, "trials": len(trials), "wall_s": wall, "compute_s": compute,
            "ideal_s": compute / workers, "ratio": wall / (compute / workers)}


def metric_throughput(uri: str) -> dict:
    handle = open_sweep(uri, "throughput")
    run = TrialRun.start(handle, "bench", {"seed": 0}, attempt=1, run_name="batched", heartbeat_s=3600)
    n = 20_000
    started = time.perf_counter()
    for step in range(n // 10):
        run.log_metrics(step, {f"m{i}": float(step + i) for i in range(10)})
    run.finish("converged")
    batched = n / (time.perf_counter() - started)
    mlflow, single = client(uri), TrialRun.start(handle, "bench1", {"seed": 0}, attempt=1, run_name="one by one")
    started = time.perf_counter()
    for step in range(300):
        mlflow.log_metric(single.run_id, "m", float(step), step=step)
    one_by_one = 300 / (time.perf_counter() - started)
    single.finish("converged")
    return {"batched_values_per_s": batched, "one_by_one_values_per_s": one_by_one}


def logging_share(uri: str, steps: int, log_every: int) -> dict:
    cfg = Composer()(BASE + [f"train.max_steps={steps}", f"train.log_every={log_every}"])
    handle = open_sweep(uri, f"logging every {log_every}")
    run = TrialRun.start(handle, "log", cfg, attempt=1, run_name="logging share")
    spent, values = [0.0], [0]

    def timed(step, metrics):
        t0 = time.perf_counter()
        run.log_metrics(step, metrics)
        spent[0] += time.perf_counter() - t0
        values[0] += len(metrics)

    started = time.perf_counter()
    train(cfg, on_log=timed)
    t0 = time.perf_counter()
    run.finish("max_steps")  # with its claim check, as a job does
    spent[0] += time.perf_counter() - t0
    total = time.perf_counter() - started
    return {"log_every": log_every, "values": values[0], "trial_s": total, "logging_s": spent[0],
            "share": spent[0] / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--trial-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        steps = calibrate_steps(args.trial_seconds)
        big_trials = expand(BASE + [f"train.max_steps={steps}", "seed=range(32)", "exec.pack=off"])
        tiny_trials = expand(TINY + ["seed=range(200)", "exec.pack=off"])
        big_compute = own_compute(big_trials, args.workers)
        tiny_compute = own_compute(tiny_trials, args.workers)
        t0 = time.perf_counter()
        runtime.connect({"address": None, "num_cpus": args.workers, "dashboard": False})
        tasks.warm_up()
        startup = time.perf_counter() - t0
        try:
            big = sweep_overhead(uri, "two_seconds", big_trials, args.workers, big_compute)
            tiny = sweep_overhead(uri, "tiny", tiny_trials, args.workers, tiny_compute)
            packed = sweep_overhead(uri, "tiny packed", expand(TINY + ["seed=range(200)"]), args.workers,
                                    tiny_compute)
        finally:
            runtime.shutdown()
        throughput = metric_throughput(uri)
        shares = [logging_share(uri, steps, every) for every in (100, 10)]

    print(f"\nsgdlab platform overhead ({args.workers} workers, Ray start-up {startup:.1f} s, "
          f"{steps} steps ~ {args.trial_seconds:.0f} s per trial)\n")
    print(f"{'sweep':<14}{'trials':>7}{'wall s':>9}{'compute s':>11}{'compute/workers':>17}{'ratio':>8}  goal")
    for row, goal in ((big, "<= 1.2"), (tiny, "(exec.pack=off: for comparison)"), (packed, "<= 1.2")):
        print(f"{row['sweep']:<14}{row['trials']:>7}{row['wall_s']:>9.1f}{row['compute_s']:>11.1f}"
              f"{row['ideal_s']:>17.1f}{row['ratio']:>8.2f}  {goal}")
    for row in (tiny, packed):
        print(f"per-trial platform cost, {row['sweep']}: "
              f"{(row['wall_s'] - row['ideal_s']) / row['trials'] * args.workers * 1000:.0f} ms of worker time "
              f"(a trial's own compute: {row['compute_s'] / row['trials'] * 1000:.0f} ms)")
    print(f"MLflow on SQLite: batched writer {throughput['batched_values_per_s']:,.0f} values/s (goal >= 5,000), "
          f"one call per value {throughput['one_by_one_values_per_s']:,.0f} values/s "
          f"(batched / one-by-one = {throughput['batched_values_per_s'] / throughput['one_by_one_values_per_s']:.0f}x)")
    for share in shares:
        print(f"logging share of a {share['trial_s']:.1f} s trial, train.log_every={share['log_every']} "
              f"({share['values']} values): {100 * share['share']:.2f}% (goal < 5%), "
              f"{1000 * share['logging_s']:.0f} ms in all")


if __name__ == "__main__":
    main()
