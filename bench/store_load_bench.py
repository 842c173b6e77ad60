"""Drivers on one SQLite store of a loaded machine: a 5-round refinement and a 200-trial sweep run by 4 drivers
at once, all five in one folder (one mlflow.db), beside CPU burners (one busy process per core), and a count of
the trials that failed because sgdlab's store check called the healthy store damaged.

Issue 31 found two trials FAILED with "mlflow.db is not a readable MLflow store (truncated: ...)" and one lost in
such a refinement on a loaded machine: a write-ahead-log checkpoint had outlasted the check's settle time. This
bench reproduces those conditions and prints, for the whole run: FAILED runs whose error names the store check,
all FAILED runs, trials reported lost, trials with two FINISHED runs, unfinished trials, tracebacks, the refinement's
rounds, and SQLite's quick_check of the store at the end.

    .venv/bin/python bench/store_load_bench.py            (make bench-store; ~10 minutes on 2 cores)
    .venv/bin/python bench/store_load_bench.py --seeds 10 --drivers 2
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sgdlab.tracking.query import by_trial, sweep_runs

GRID = """description: tiny trials that many drivers share
overrides: [model.depth=1, model.width=8, data.n_train=64, data.batch_size=8, optim.temperature=0.01,
            train.max_steps=300, train.stop_when_fitted=false, train.log_every=50, train.checkpoint_every=100]
axes:
  model.alpha: [1, 16]
  seed: [{seeds}]
"""
# Full-batch GD on least squares, lr bisected to its stability boundary (as tests/reliability/test_refinement.py):
# the boundary (2 / lambda_max = 7.0) lies in a factor-4 bracket of the grid, which 5 rounds narrow to 1 + 0.05.
REFINE = """description: GD on least squares, lr bisected to its stability boundary in 5 rounds
overrides: [data=teacher_perceptron, data.dim=8, data.n_train=32, data.batch_size=32, model=perceptron,
            model.alpha=1, loss=mse, optim=sgd, train.dtype=float64, train.max_steps=400,
            train.stop_when_fitted=false, train.log_every=100, train.divergence_loss=1.0e+6]
axes:
  optim.lr: [0.5, 2, 8, 32]
  seed: [0]
refine:
  axis: optim.lr
  criterion: outcome == diverged
  tolerance: 0.05
  max_rounds: 5
"""
STORE_CHECK = "is not a readable MLflow store"


def burn() -> list[subprocess.Popen]:
    """One busy Python process per core, until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]


def driver(folder: Path, sweep: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sgdlab.cli", "sweep", sweep, "cluster.num_cpus=1",
                             "report.auto=false"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def count(uri: str, sweep: str) -> dict:
    runs = sweep_runs(uri, sweep)
    trials = by_trial(runs)
    finished = [[r for r in trial if r.status == "FINISHED"] for trial in trials.values()]
    failed = [r for r in runs if r.status == "FAILED"]
    errors: dict[str, int] = {}
    for r in failed:
        errors[r.error[:120]] = errors.get(r.error[:120], 0) + 1
    return {"trials": len(trials), "failed_runs": len(failed), "errors": errors,
            "store_check_failures": sum(STORE_CHECK in r.error for r in failed),
            "two_finished": sum(len(f) > 1 for f in finished), "unfinished": sum(not f for f in finished)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=4, help="drivers of the grid sweep")
    parser.add_argument("--seeds", type=int, default=100, help="seeds of the grid (trials: 2 x seeds)")
    parser.add_argument("--no-burn", action="store_true", help="leave the machine unloaded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storeload") as tmp:
        folder, sweeps = Path(tmp), Path(tmp) / "sweeps"
        sweeps.mkdir()
        (sweeps / "load_grid.yaml").write_text(GRID.format(seeds=", ".join(map(str, range(args.seeds)))))
        (sweeps / "load_refine.yaml").write_text(REFINE)
        env = {**os.environ, "SGDLAB_SWEEPS_DIR": str(sweeps)}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("RAY_ADDRESS", None)
        burners = [] if args.no_burn else burn()
        print(f"{len(burners)} CPU burners; {args.drivers} drivers of a {2 * args.seeds}-trial sweep and 1 driver "
              f"of a 5-round refinement, each with its own local Ray, on one SQLite store", flush=True)
        started = time.monotonic()
        try:
            procs = {f"grid driver {i}": driver(folder, "load_grid", env) for i in range(args.drivers)}
            procs["refinement driver"] = driver(folder, "load_refine", env)
            outputs = {name: p.communicate() for name, p in procs.items()}
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        seconds = time.monotonic() - started
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        for name, p in procs.items():
            last = outputs[name][1].strip().splitlines()[-1:] or [""]
            print(f"{name}: exit {p.returncode}; {last[0][:150]}")
        grid, refine = count(uri, "load_grid"), count(uri, "load_refine")
        stderr = "".join(err for _, err in outputs.values())
        rounds = max((r for r in range(1, 6) if f"refine round {r}:" in outputs["refinement driver"][1]), default=0)
        db = sqlite3.connect(f"{(folder / 'mlflow.db').as_uri()}?mode=ro", uri=True)
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        db.close()
        print(f"\n{seconds:.0f} s in all. grid: {grid['trials']} trials, {grid['unfinished']} unfinished, "
              f"{grid['two_finished']} with two FINISHED runs, {grid['failed_runs']} FAILED runs. refinement: "
              f"{refine['trials']} trials in {rounds} rounds, {refine['unfinished']} unfinished, "
              f"{refine['failed_runs']} FAILED runs.")
        for error, n in sorted({**grid["errors"], **refine["errors"]}.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {n} FAILED runs: {error}")
        for name, (_, err) in outputs.items():
            if "Traceback" in err:
                tail = [line for line in err.strip().splitlines() if line.startswith("  File ")][-3:]
                print(f"  {name}'s traceback ends: {' <- '.join(t.strip() for t in reversed(tail))[:400]}")
        failures = grid["store_check_failures"] + refine["store_check_failures"]
        lost = stderr.count("were lost before their runs were recorded")
        print(f"FAILED by the store check: {failures}; drivers reporting lost trials: {lost}; tracebacks: "
              f"{stderr.count('Traceback')}; non-zero exits: {sum(p.returncode != 0 for p in procs.values())}; "
              f"quick_check of the store: {verdict}")
        if failures or lost or verdict != "ok":
            raise SystemExit(1)


if __name__ == "__main__":
    main()
