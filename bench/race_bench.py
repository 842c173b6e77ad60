"""Race several `sgdlab sweep` drivers on one sweep, many times, and count trials with more than one FINISHED
run (the claim protocol, tracking/claims.py, promises none).

Each race starts N drivers together in an empty folder (they race on creating the SQLite store as well), waits
for them, and reads the store. By default every driver starts its own local Ray, as a user's second terminal
would (slow on a small machine: N Ray heads at once); --ray-address joins a running Ray instead.

    .venv/bin/python bench/race_bench.py                  # 4 drivers, 10 races
    .venv/bin/python bench/race_bench.py --drivers 2 --races 3 --ray-address 127.0.0.1:6380
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sgdlab.tracking.query import by_trial, sweep_runs

RACE = (Path(__file__).parent / "race.yaml").read_text()


def race(folder: Path, drivers: int, env: dict) -> dict:
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "sgdlab.cli", "sweep", "race", "cluster.num_cpus=1"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(drivers)]
    errors = [p.communicate()[1] for p in procs]
    runs = sweep_runs(f"sqlite:///{folder / 'mlflow.db'}", "race")
    finished = [[r for r in trial if r.status == "FINISHED"] for trial in by_trial(runs).values()]
    return {"seconds": time.monotonic() - started, "exit_codes": [p.returncode for p in procs],
            "trials": len(finished), "duplicates": sum(len(f) > 1 for f in finished),
            "unfinished": sum(not f for f in finished), "yielded": sum(r.outcome == "duplicate" for r in runs),
            "lost_tags_on_finished": sum(1 for f in finished for r in f if "worker lost" in r.error),
            "tracebacks": sum("Traceback" in e for e in errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=4)
    parser.add_argument("--races", type=int, default=10)
    parser.add_argument("--ray-address", default=None, help="join this Ray instead of a local Ray per driver")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="race") as tmp:
        (Path(tmp) / "sweeps").mkdir()
        (Path(tmp) / "sweeps" / "race.yaml").write_text(RACE)
        env = {**os.environ, "SGDLAB_SWEEPS_DIR": str(Path(tmp) / "sweeps")}
        env.pop("MLFLOW_TRACKING_URI", None)
        if args.ray_address:
            env["RAY_ADDRESS"] = args.ray_address
        totals = {"duplicates": 0, "unfinished": 0, "lost_tags_on_finished": 0, "tracebacks": 0, "failed_drivers": 0}
        print(f"{args.races} races of {args.drivers} drivers, 6 trials each")
        for i in range(args.races):
            folder = Path(tmp) / f"race{i}"
            folder.mkdir()
            result = race(folder, args.drivers, env)
            for key in totals:
                totals[key] += (sum(code != 0 for code in result["exit_codes"]) if key == "failed_drivers"
                                else result[key])
            print(f"race {i}: {result['seconds']:5.1f} s, exit codes {result['exit_codes']}, "
                  f"{result['trials']} trials, {result['duplicates']} with two FINISHED runs, "
                  f"{result['yielded']} runs yielded as duplicates", flush=True)
        print(f"total over {args.races} races: {totals['duplicates']} trials with more than one FINISHED run, "
              f"{totals['unfinished']} unfinished, {totals['lost_tags_on_finished']} FINISHED runs tagged lost, "
              f"{totals['tracebacks']} tracebacks, {totals['failed_drivers']} drivers with a non-zero exit")


if __name__ == "__main__":
    main()
