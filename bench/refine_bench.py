"""What a refinement costs: `sgdlab sweep lr_batch_scaling optim=sgd` (a factor-4 grid of lr, then bisection rounds
until every batch size's bracket of lr_max is narrower than 2^(1/8)) beside the same trials run at once, as one
sweep of the same jobs in a fresh store, on the same local Ray (a driver and its Ray start in both).

Prints both wall times and their ratio (issue 18's goal: at most 1.2), the brackets, and the trials used beside a
uniform 2^(1/8) grid over the same range (goal: at most 1/3 of them).

Run: .venv/bin/python bench/refine_bench.py [--sweep lr_batch_scaling] [overrides ...]   (make bench-refine)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from sgdlab.cli.main import app
from sgdlab.orchestration.plan import TrialJob
from sgdlab.orchestration.scheduler import run_jobs
from sgdlab.tracking.artifacts import recorded_config
from sgdlab.tracking.query import sweep_runs


def in_folder(folder: Path, fn):
    """fn() with `folder` as the working directory (where the default store goes); (result, wall seconds)."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        started = time.monotonic()
        return fn(), time.monotonic() - started
    finally:
        os.chdir(here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="lr_batch_scaling")
    parser.add_argument("overrides", nargs="*", default=["optim=sgd"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as refined_dir, tempfile.TemporaryDirectory() as at_once_dir:
        refined, at_once = Path(refined_dir), Path(at_once_dir)
        result, refined_s = in_folder(refined, lambda: CliRunner().invoke(app, ["sweep", args.sweep,
                                                                              *args.overrides]))
        if result.exit_code != 0:
            raise SystemExit(f"the refined sweep failed ({result.exit_code}):\n{result.output}")
        print(result.stdout, result.stderr, sep="\n")
        uri = f"sqlite:///{refined / 'mlflow.db'}"
        runs = [r for r in sweep_runs(uri, args.sweep) if r.status == "FINISHED"]
        jobs = [TrialJob(r.trial_id, recorded_config(uri, r.run_id), 1, r.run_name) for r in runs]
        summaries, at_once_s = in_folder(at_once, lambda: run_jobs(
            args.sweep, jobs, jobs[0].config, f"sqlite:///{at_once / 'mlflow.db'}"))
        finished = sum(s.status == "finished" for s in summaries)
    print(f"{len(jobs)} trials: refined in rounds {refined_s:.1f} s, the same trials at once {at_once_s:.1f} s "
          f"({finished} finished); ratio {refined_s / at_once_s:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
