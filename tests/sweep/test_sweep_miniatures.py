"""Miniatures of the nine research sweeps: each real sweeps/NAME.yaml, shrunk by command-line overrides, runs end to
end through the real `sgdlab sweep` (Ray, SQLite MLflow store) and `sgdlab report` draws the sweep's figure(s).

Every sweep also expands through `sgdlab sweep NAME --dry-run`.

The miniatures share the session's Ray head (conftest.ray_head: 2 CPUs, its own port, temp dir and auth token),
joined with cluster.address: a local Ray per sweep would cost its start-up nine times. Three sweeps run at a time, each in its own folder with
its own store, one task at a time; the nine reports are made in one process. The overrides keep each sweep's
meaning (what it varies and what its figure needs) and make it tiny: a few trials (one seed), tiny networks
(width 8, 4 channels), P = 16..128 points, 20..2000 steps, probes on all of these points with 2..4 products or
batches. Why each value is there is said next to it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import NO_REPORT, REPO, SGDLAB, mlflow_runs

pytestmark = pytest.mark.slow

NAMES = ("sgd_noise", "temperature_vs_p", "perceptron", "edge_of_stability", "sgd_sharpness", "batch_hessian",
         "lr_batch_scaling", "stability_trace", "hawq_sensitivity", "sgd_noise_gate")
MLP = ["model.depth=1", "model.width=8"]  # the smallest mean-field MLP the sweeps' models reduce to
# One task of a sweep at a time: one Ray worker per sweep (each new worker imports torch and mlflow) while the
# other sweeps running beside it keep both CPUs busy.
ONE_TASK = ["resources.max_in_flight=1"]
PACK = "exec.pack=on"  # same-shape trials in one task, as the full sweeps pack their groups of >= 16

# name: (overrides, report figures that must exist)
MINIATURES = {
    # 2 alpha x 2 T at one P: the smallest (alpha, T) plane a phase diagram draws; 50 steps need not fit the data.
    "sgd_noise": ([*MLP, PACK, "data.n_train=64", "model.alpha=1,1024", "optim.temperature=0.001,0.01", "seed=0",
                   "train.max_steps=50", "train.log_every=25"], ["phase_test_error.png"]),
    # 3 T x 3 P (a fit needs 3) on the teacher task at chi = 0: every trial fits its data (converged: runs stopped at
    # max_steps are left out of T_c) within ~300 steps, and the weight change crosses each fixed threshold between
    # T = 0.01 and 0.1 at every P: the kernel-escape T_c exists at 3 P and its power law is drawn.
    "temperature_vs_p": ([*MLP, PACK, "data.chi=0", "data.n_test=200", "data.n_train=16,32,64", "data.batch_size=8",
                          "optim.temperature=0.001,0.01,0.1", "seed=0", "train.max_steps=3000", "train.log_every=100"],
                         ["weight_change_vs_T.png", "tc_vs_P.png", "collapse.png"]),
    # 2 tasks x 2 alpha at one T (what the gate compares), 2 seeds (a standard error) on 32 points: sphere_field's
    # trials fit within 200 steps (a verdict), digits' at alpha = 1 do not in 500 (width 8: a row without verdict).
    # train.min_t=null: t = 6000 would ask for 1563 steps at lr = 3.84.
    "sgd_noise_gate": ([*MLP, "data=digits_parity,sphere_field", "data.n_train=32", "data.n_test=200",
                        "model.alpha=1,1024", "optim.temperature=0.03", "seed=0,1", "train.min_t=null",
                        "train.max_steps=500", "train.log_every=250"], ["gate_test_error_vs_alpha.png"]),
    # chi in {0, 1} x 3 P (MIN_P = 3 values per fit): P = 16..64 points of a small test set, at the sweep's T
    # (alpha T = 1024, B = 1), where every run fits its data (converged) within ~500 steps. At P/d <= 8 the first
    # step is a large part of w_par, so the fits are over all regimes (flagged) and the figures are still drawn.
    "perceptron": (["data.n_train=16,32,64", "data.n_test=256", "seed=0", "data.seed=0", "train.max_steps=2000",
                    "train.log_every=500"], ["p_exponent_vs_chi.png", "norm_vs_P.png"]),
    # one full-batch lr; 2 sharpness points (steps 0 and 20) and the last make a trajectory against 2/lr.
    "edge_of_stability": ([*MLP, "data.n_train=32", "data.batch_size=32", "optim.lr=20", "train.max_steps=40",
                           "train.log_every=20", "probe.every=20", "probe.n_examples=32"],
                          ["sharpness_trajectories.png"]),
    # 2 batch sizes (the least a lambda_max-against-B figure needs), each with its sharpness and batch sharpness
    # at steps 0, 20 and 40.
    "sgd_sharpness": ([*MLP, "data.n_train=64", "data.batch_size=4,16", "seed=0", "optim.lr=4", "train.max_steps=40",
                       "train.log_every=20", "probe.every=20", "probe.n_examples=64", "probe.n_batches=2"],
                      ["lambda_max_vs_B.png", "sharpness_trajectories.png"]),
    # one trained point probed at 2 batch sizes below N = 64.
    "batch_hessian": ([*MLP, "data.n_train=64", "data.batch_size=16", "seed=0", "train.max_steps=40",
                       "train.log_every=20", "probe.batch_sizes=[4,16]", "probe.n_batches=2", "probe.n_examples=64",
                       "probe.trace_samples=2"], ["batch_ratio.png"]),
    # SGD only, 3 B (a fit needs 3) x 3 lr (MIN_LRS = 3): lr = 0.5 lowers the loss and lr = 4096 makes the MSE
    # explode within 20 steps, so the criterion brackets lr_max at every B; one refinement round. Packed (MSE under
    # vmap), each member measuring E[lambda_max(H_B)] at step 0 for the prediction.
    "lr_batch_scaling": ([*MLP, PACK, "data.n_train=64", "optim=sgd", "data.batch_size=8,16,32", "optim.lr=0.5,4,4096",
                          "seed=0", "train.max_steps=20", "train.log_every=10", "probe.n_batches=2",
                          "refine.max_rounds=1"], ["lr_max_vs_B.png", "refine_boundary.png"]),
    # one SGD run with its end probe (lambda_max and trace: the Wu & Su quantity); 40 steps need not interpolate.
    "stability_trace": ([*MLP, "data.n_train=32", "data.batch_size=4", "optim.lr=0.5", "seed=0",
                         "train.max_steps=40", "train.log_every=20", "probe.n_examples=32", "probe.trace_samples=4"],
                        ["wu_su.png"]),
    # a 2-convolution CNN of 4 channels: 3 parameter blocks, each probed with its own 4 products.
    "hawq_sensitivity": (["model.depth=2", "model.channels=4", "data.n_train=64", "seed=0", "train.max_steps=20",
                          "train.log_every=10", "probe.n_examples=64", "probe.trace_samples=4"],
                         ["layer_sensitivity.png"]),
}
# A headline number the report logs as a metric of the sweep's run (the experiments table compares sweeps by them).
NUMBERS = {"temperature_vs_p": ["summary/a_escape_0.05"],
           "lr_batch_scaling": ["summary/lr_max_exponent/SGD", "summary/lr_predicted_exponent"]}
PARALLEL = 3  # sweeps at a time: their drivers and worker start-ups overlap the others' training


REPORTS = """
import json, os, sys
from typer.testing import CliRunner
from sgdlab.cli.main import app
results = {}
for name, (folder, overrides) in json.loads(sys.argv[1]).items():
    os.chdir(folder)
    out = CliRunner().invoke(app, ["report", name, *overrides])  # the sweep's own (a refinement replays with them)
    results[name] = [out.exit_code, out.output[-3000:] + (repr(out.exception) if out.exit_code else "")]
print(json.dumps(results))
"""


def _empty_store(folder: Path) -> Path:
    """An MLflow SQLite store with its tables made: each sweep starts from a copy rather than creating its own
    (creating one runs MLflow's schema migrations, seconds of CPU). Made in a process of its own, whose exit
    folds SQLite's write-ahead log into the file, so that the file alone is the whole store."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    script = f"from sgdlab.tracking.store import client; client({uri!r}).search_experiments()"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    assert not (folder / "mlflow.db-wal").exists()
    return folder / "mlflow.db"


@pytest.fixture(scope="module")
def miniatures(ray_head, tmp_path_factory):
    """name: (folder, `sgdlab sweep` result, (exit code, output) of `sgdlab report`) for every miniature.

    The sweeps are subprocesses, PARALLEL at a time, each in its own folder with its own store (a copy of an
    empty one); the reports are the `sgdlab report` command run in one more process, one folder after the other
    (its imports, mlflow and matplotlib, paid once rather than nine times)."""
    env, address = ray_head
    empty_store = _empty_store(tmp_path_factory.mktemp("store"))

    def sweep(name):
        folder = tmp_path_factory.mktemp(name)
        shutil.copy(empty_store, folder / "mlflow.db")
        overrides, _ = MINIATURES[name]
        return name, (folder, subprocess.run([*SGDLAB, "sweep", name, *overrides, *ONE_TASK, NO_REPORT,
                                              f"cluster.address={address}"],
                                             cwd=folder, env=env, capture_output=True, text=True, timeout=300))

    with ThreadPoolExecutor(PARALLEL) as pool:
        sweeps = dict(pool.map(sweep, NAMES))
    done = {name: (str(folder), MINIATURES[name][0]) for name, (folder, out) in sweeps.items() if out.returncode == 0}
    reports = subprocess.run([sys.executable, "-c", REPORTS, json.dumps(done)], env=env, capture_output=True,
                             text=True, timeout=300)
    assert reports.returncode == 0, reports.stderr[-3000:]
    by_name = json.loads(reports.stdout.splitlines()[-1])
    return {name: (folder, out, by_name.get(name)) for name, (folder, out) in sweeps.items()}


def test_every_research_sweep_has_a_miniature():
    assert set(MINIATURES) == set(NAMES)
    assert {p.stem for p in (REPO / "sweeps").glob("*.yaml")} >= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_miniature_runs_through_ray_and_mlflow_and_draws_its_figures(miniatures, name):
    folder, sweep, report = miniatures[name]
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert report is not None and report[0] == 0, report[1]
    _, runs = mlflow_runs(folder / "mlflow.db", name)
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    _, probes = mlflow_runs(folder / "mlflow.db", name, kind="probe")
    assert all(r.info.status == "FINISHED" for r in probes)
    summary = (folder / "reports" / name / "summary.md").read_text()
    assert f"{len(runs)} trials recorded: {len(runs)} finished" in summary
    for figure in MINIATURES[name][1]:
        path = folder / "reports" / name / figure
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (figure, summary)
    if name in NUMBERS:
        _, (sweep_run,) = mlflow_runs(folder / "mlflow.db", name, kind="sweep")
        assert all(math.isfinite(sweep_run.data.metrics[key]) for key in NUMBERS[name]), sweep_run.data.metrics


def test_every_sweep_expands_in_dry_run(tmp_path, monkeypatch):
    """`sgdlab sweep NAME --dry-run` (the command, in this process through typer's runner) for all nine, at the
    default scale (scale=paper holds thousands of trials; test_sweep.py tests how scales select presets)."""
    from typer.testing import CliRunner

    from sgdlab.cli.main import app

    monkeypatch.delenv("SGDLAB_SWEEPS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    for name in NAMES:
        out = CliRunner().invoke(app, ["sweep", name, "--dry-run"])
        assert out.exit_code == 0, (name, out.output)
        assert name in out.output and "trial_id" in out.output, out.output[:500]
    assert not (tmp_path / "mlflow.db").exists()
