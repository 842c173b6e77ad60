"""GPU correctness without Ray (issue 22, item 4). `--device cpu` runs the same checks on the CPU (a dry run).

1. packed = alone: six members of one shape (their own lr, alpha, seed and max_steps; they stop at different
   steps and one diverges) trained as one pack and one by one on the device in float64; every final metric and
   parameter agrees to 1e-6 relative (as tests/training/test_pack_members.py asserts on the CPU).
2. the training job: jobs/train.run_train on one trial with resources.gpu = 1 and probe.every (the probe data
   placed on the device), recorded in a SQLite MLflow store in a temporary folder; its sharpness history is
   finite and equals the same trial's on the CPU to 1e-6. Needs mlflow: where it cannot be imported (the device
   machine has torch, numpy and scikit-learn only) the check says so and is not counted as passed.

The trial configs are composed here with Hydra, or read from a JSON file written by `--write-configs` on a
machine that has it (`--configs FILE`), so that part 1 needs torch and scikit-learn alone.
Exit code 0 when every check that ran passed, 1 otherwise.
Run: .venv/bin/python bench/gpu_correctness.py [--device cuda] [--configs FILE | --write-configs FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

from sgdlab.training.loop import Member, train, train_pack

REL = 1e-6
VERDICT = {True: "PASS", False: "FAIL", None: "SKIP"}
PACK_BASE = ["model.depth=2", "model.width=16", "data.n_train=32", "data.n_test=64", "data.batch_size=8",
             "loss=hinge", "train.dtype=float64", "train.log_every=7", "train.max_steps=60",
             "train.divergence_loss=1e6"]
PACK_MEMBERS = [["model.alpha=1", "optim.lr=0.5", "seed=0"], ["model.alpha=4", "optim.lr=0.25", "seed=1"],
                ["model.alpha=1", "optim.lr=0.5", "seed=2", "train.max_steps=20"],
                ["model.alpha=16", "optim.lr=1.0", "seed=3"],
                ["model.alpha=1", "optim.lr=0.125", "seed=4", "train.max_steps=35"],
                ["model.alpha=1", "optim.lr=1e7", "seed=5"]]
PROBED = ["model.depth=2", "model.width=16", "data.n_train=128", "data.batch_size=16", "optim.temperature=1e-2",
          "train.dtype=float64", "train.max_steps=200", "train.log_every=50", "probe.every=50",
          "probe.n_examples=128", "probe.batch_sizes=[16]", "probe.n_batches=2"]


def compose_configs() -> dict:
    from sgdlab.config.compose import Composer

    composer = Composer()
    return {"pack": [composer(PACK_BASE + m) for m in PACK_MEMBERS], "probed": composer(PROBED)}


def relative(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(b), 1e-300)


def packed_equals_alone(configs: list[dict], device: str) -> tuple[bool, str]:
    """Check 1: (passed, one line)."""
    alone = [train(c, device=device) for c in configs]
    packed = train_pack([Member(c) for c in configs], device=device)
    worst, mismatched = 0.0, []
    for i, (a, p) in enumerate(zip(alone, packed)):
        if (a.outcome, a.steps) != (p.outcome, p.steps):
            mismatched.append(f"member {i}: {a.outcome}@{a.steps} alone, {p.outcome}@{p.steps} packed")
        worst = max([worst, *(relative(p.metrics[k], v) for k, v in a.metrics.items() if math.isfinite(v))])
        for key, value in a.params.items():
            scale = value.abs().max().clamp_min(1e-300)
            worst = max(worst, float((p.params[key] - value).abs().max() / scale))
    outcomes = ", ".join(f"{a.outcome}@{a.steps}" for a in alone)
    passed = not mismatched and worst <= REL
    return passed, (f"packed = alone on {device}, float64, 6 members ({outcomes}): worst relative difference "
                    f"{worst:.1e} (<= {REL:g}){'; ' + '; '.join(mismatched) if mismatched else ''}")


def sharpness_history(config: dict, device: str, folder: str) -> list[tuple[int, float]]:
    """The trial trained by the training job on `device`, recorded in a SQLite store in `folder`; its sharpness
    history read back from the store."""
    from mlflow.tracking import MlflowClient

    from sgdlab.jobs.train import run_train
    from sgdlab.tracking.store import open_sweep

    uri = f"sqlite:///{folder}/mlflow.db"
    (summary,) = run_train([config], open_sweep(uri, "gpu_check"), trial_ids=["gpu-check"], attempts=[1],
                           run_names=[device], device=device)
    if summary.status != "finished":
        raise RuntimeError(f"the training job failed on {device}: {summary.error}")
    history = MlflowClient(uri).get_metric_history(summary.run_id, "sharpness")
    return sorted((m.step, m.value) for m in history)


def training_job_on_device(config: dict, device: str) -> tuple[bool | None, str]:
    """Check 2: (passed, or None when mlflow is missing; one line)."""
    try:
        import mlflow  # noqa: F401
    except ImportError as error:
        return None, f"training job with probe.every on {device}: not run ({error}; carry mlflow to run it)"
    config = json.loads(json.dumps(config))
    config["resources"]["gpu"] = 1 if device == "cuda" else 0
    with tempfile.TemporaryDirectory() as there, tempfile.TemporaryDirectory() as here:
        on_device, on_cpu = sharpness_history(config, device, there), sharpness_history(config, "cpu", here)
    steps = [s for s, _ in on_device]
    worst = max(relative(a, b) for (_, a), (_, b) in zip(on_device, on_cpu))
    passed = (steps == [s for s, _ in on_cpu] and len(steps) >= 2 and all(math.isfinite(v) for _, v in on_device)
              and worst <= REL)
    return passed, (f"training job with probe.every on {device}: sharpness at steps {steps}, "
                    f"{', '.join(f'{v:.4g}' for _, v in on_device)}; worst relative difference to the CPU "
                    f"{worst:.1e} (<= {REL:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", help="JSON file of the trial configs (written by --write-configs)")
    parser.add_argument("--write-configs", help="compose the trial configs, write them to this JSON file, exit")
    args = parser.parse_args()
    if args.write_configs:
        open(args.write_configs, "w").write(json.dumps(compose_configs()))
        return
    configs = json.loads(open(args.configs).read()) if args.configs else compose_configs()
    started = time.perf_counter()
    results = [packed_equals_alone(configs["pack"], args.device),
               training_job_on_device(configs["probed"], args.device)]
    for passed, line in results:
        print(f"{VERDICT[passed]}  {line}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(0 if all(passed is not False for passed, _ in results) else 1)


if __name__ == "__main__":
    main()
