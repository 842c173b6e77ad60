"""sgdlab-run, the Hydra app: --multirun through the sgdlab launcher plugin, Optuna's sweeper driving it, its
bad input, and the package installed from a wheel. Real processes, a real Ray, a real SQLite MLflow store."""

import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from sgdlab.sweep.expand import expand

from conftest import REPO, SGDLAB, mlflow_runs, status_json

SGDLAB_RUN = [str(Path(sys.executable).with_name("sgdlab-run"))]  # the console script of this environment
TINY_TRIAL = ["model.depth=1", "model.width=8", "data.n_train=64", "data.batch_size=8", "train.max_steps=200",
              "train.log_every=20", "report.auto=false"]


def sgdlab_run(*args: str, cwd: Path, command=SGDLAB_RUN, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_multirun_records_trials_that_status_counts_resubmit_reruns_and_a_rerun_skips(tmp_path):
    """`sgdlab-run -m hydra/launcher=sgdlab T=a,b seed=0,1` with the seed-1 trials failing (fault injection): exit 1,
    4 runs with the trial ids `sgdlab sweep` gives the same overrides; `sgdlab status` counts them, `sgdlab
    resubmit` reruns the 2 failed ones, and a second sgdlab-run skips all 4."""
    grid = ["optim.temperature=1e-3,1e-2", "seed=0,1", *TINY_TRIAL]
    out = sgdlab_run("-m", "hydra/launcher=sgdlab", *grid, "app.sweep=hydra_grid", "fault.raise_at_step=5",
                     "fault.seeds=[1]", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "4 to run" in out.stderr and "2 finished" in out.stderr and "2 failed" in out.stderr
    assert "Rerun the failed trials with: make resubmit EXP=hydra_grid" in out.stderr

    _, runs = mlflow_runs(tmp_path / "mlflow.db", "hydra_grid")
    assert {r.data.tags["sgdlab.trial_id"] for r in runs} == {t.trial_id for t in expand(grid)}
    assert {(r.data.params["optim.temperature"], r.data.params["seed"], r.info.status) for r in runs} == {
        ("0.001", "0", "FINISHED"), ("0.001", "1", "FAILED"), ("0.01", "0", "FINISHED"), ("0.01", "1", "FAILED")}
    assert sorted(r.data.tags["mlflow.runName"] for r in runs) == [  # named by the overrides that vary, and P
        "T=0.001 seed=0 P=64", "T=0.001 seed=1 P=64", "T=0.01 seed=0 P=64", "T=0.01 seed=1 P=64"]
    status = status_json(tmp_path, "hydra_grid")
    assert status["trials"] == 4 and status["counts"]["finished"] == 2 and status["counts"]["failed"] == 2

    resubmitted = subprocess.run([*SGDLAB, "resubmit", "hydra_grid", "report.auto=false"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600)
    assert resubmitted.returncode == 0 and "2 finished" in resubmitted.stderr, resubmitted.stderr
    assert status_json(tmp_path, "hydra_grid")["counts"]["finished"] == 4

    again = sgdlab_run("-m", *grid, "app.sweep=hydra_grid", cwd=tmp_path)  # the sgdlab launcher is the default
    assert again.returncode == 0, again.stderr
    assert "4 already finished (skipped)" in again.stderr and "nothing to run." in again.stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "hydra_grid")
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 2 + ["FINISHED"] * 4

    job = sgdlab_run("--cfg", "job", "optim.temperature=1e-3", "model.width=8", cwd=tmp_path,
                     command=[sys.executable, "-m", "sgdlab.app"])
    assert job.returncode == 0, job.stderr
    config = yaml.safe_load(job.stdout)
    assert config["optim"]["temperature"] == 1e-3 and config["model"]["width"] == 8 and "hydra" not in config


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_optuna_batches_run_packed_through_the_launcher_and_get_their_objective(tmp_path):
    """Optuna's sweeper asks 8 trials in 2 batches of 4; each batch is one packed launch, and Optuna's best trial
    is the recorded run with the smallest final test_error."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = sgdlab_run("-m", "hydra/sweeper=optuna", "hydra/launcher=sgdlab", "hydra.sweeper.n_trials=8",
                     "hydra.sweeper.n_jobs=4", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.direction=minimize",
                     "optim.temperature=tag(log,interval(1e-3,1e-1))", "model.alpha=choice(1,16)", "exec.pack=on",
                     "app.sweep=hydra_optuna", "app.objective=test_error", *TINY_TRIAL,
                     "hydra.sweep.dir=optuna_study", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("hydra_optuna: 4 trials;") == 2  # two launches of one batch each
    assert out.stderr.count("packed: 4 trials in ") == 2  # each batch packed (split over the task slots)

    _, runs = mlflow_runs(tmp_path / "mlflow.db", "hydra_optuna")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags.get("sgdlab.pack") for r in runs)  # trained in packs
    result = yaml.safe_load((tmp_path / "optuna_study" / "optimization_results.yaml").read_text())
    best = min(runs, key=lambda r: r.data.metrics["test_error"])
    assert result["best_value"] == best.data.metrics["test_error"]
    assert math.isclose(result["best_params"]["optim.temperature"], float(best.data.params["optim.temperature"]),
                        rel_tol=1e-9)
    assert str(result["best_params"]["model.alpha"]) == best.data.params["model.alpha"]


@pytest.mark.parametrize("args, message", [
    (("optim.temperature=1e-3", "optim.lrr=3"), "optim.lrr: unknown config key; allowed in optim=sgd: lr, name, "
                                                "temperature"),
    (("-m", "optim.temperature=interval(0.001,0.1)"), "a grid needs discrete values: use range() or a list, or an "
                                                      "Optuna sweeper"),
    (("-m", "optim.temperature=1e-3,0"), "optim.temperature: must be > 0, got 0"),
    # with an experiment config: its hydra.sweeper.params and the command line make the grid that is checked
    (("-m", "+experiment=noise_grid", "model.alpha=1,-1"), "model.alpha: must be > 0, got -1"),
    (("optim.temperature=1e-3,1e-2",), "optim.temperature=1e-3,1e-2: several values run several trials: add -m"),
    (("optim.temperature=1e-3", "app.objective=accuracy"), "app.objective: 'accuracy' is not a final metric"),
    (("optim.temperature=1e-3", "app.sweep=../x"), "sweep name '../x': use letters, digits"),
    (("-m", "seed=range(0,10000000)"), "the grid seed (more than 100000) has more than 100000 trials, the limit"),
    # Optuna's settings, which its sweeper would answer with a traceback (and n_jobs=0 with a multirun/ folder)
    (("-m", "hydra/sweeper=optuna", "optim.temperature=interval(1,0)"),
     "optim.temperature=interval(1,0): an empty interval (its start must not exceed its end)"),
    (("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=-1", "optim.temperature=interval(0.001,0.1)"),
     "hydra.sweeper.n_trials: must be a whole number >= 1, got -1"),
    (("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_jobs=0", "optim.temperature=interval(0.001,0.1)"),
     "hydra.sweeper.n_jobs: must be a whole number >= 1, got 0"),
    (("-m", "seed=" + "[" * 5000 + "0" + "]" * 5000), "nested deeper than 20 levels"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = sgdlab_run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("sgdlab-run: error: ") and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no Hydra output folder


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_runs_from_another_folder(tmp_path):
    """The wheel carries conf/, sweeps/ and the launcher plugin. It is installed without dependencies in a fresh
    virtual environment that reads them from this one (the wheels on disk, not the network), and run from a folder
    that is not the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for folder in ("conf", "sweeps", "platform"):
        shutil.copytree(REPO / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("sgdlab-*.whl")

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after its own packages
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGDLAB_")}
    run = lambda *cmd: subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)  # noqa: E731
    where = run(str(python), "-c", "import sgdlab, hydra_plugins.sgdlab_launcher as p; print(sgdlab.__file__, "
                                   "p.__file__)")
    assert where.stdout.split() == [f"{purelib}/sgdlab/__init__.py", f"{purelib}/hydra_plugins/sgdlab_launcher/"
                                                                       "__init__.py"], where.stderr
    version = run(str(venv / "bin" / "sgdlab"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("sgdlab 0.1.0 (numerics version "), version.stderr
    dry = run(str(venv / "bin" / "sgdlab"), "sweep", "smoke", "--dry-run")
    assert dry.returncode == 0 and "smoke: 8 trials" in dry.stdout, dry.stderr
    plugins = run(str(venv / "bin" / "sgdlab-run"), "--info", "plugins")
    assert "SgdlabLauncher" in plugins.stdout, plugins.stderr
    own = work / "my_sweeps"
    own.mkdir()
    (own / "mine.yaml").write_text("axes:\n  seed: [0, 1, 2]\noverrides: [optim.temperature=0.01]\n")
    mine = run(str(venv / "bin" / "sgdlab"), "--sweeps-dir", str(own), "sweep", "mine", "--dry-run")
    assert mine.returncode == 0 and "mine: 3 trials" in mine.stdout, mine.stderr
    assert sorted(p.name for p in work.iterdir()) == ["my_sweeps"]  # dry runs create nothing


def test_version_names_the_numerics_version(tmp_path):
    from sgdlab import __version__
    from sgdlab.numerics import VERSION

    out = subprocess.run([*SGDLAB, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"sgdlab {__version__} (numerics version {VERSION})"

