"""The driver interrupted: Ctrl-C marks in-flight runs KILLED; a killed driver leaves stale runs that reruns pick up."""

import os
import re
import signal
import subprocess
import time

import pytest

from sgdlab.tracking.query import sweep_runs

from conftest import SGDLAB, mlflow_runs, run_sgdlab, status_json, without_report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]  # one Ray head

SLOW = """
overrides: [model.depth=2, model.width=32, data.n_train=256, data.batch_size=16, optim.temperature=0.001,
            train.max_steps=6000, train.stop_when_fitted=false, train.log_every=100, tracking.heartbeat_s=0.5]
axes:
  seed: [0, 1]
"""


def start_sweep(cwd, *args):
    return subprocess.Popen([*SGDLAB, *without_report(["sweep", "slow", *args])], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_running(store, n, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if store.exists() and sum(r.status == "RUNNING" for r in sweep_runs(f"sqlite:///{store}", "slow")) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{n} RUNNING runs never appeared")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_marks_in_flight_runs_killed(sweeps_dir, tmp_path, stop):
    (sweeps_dir / "slow.yaml").write_text(SLOW)
    driver = start_sweep(tmp_path)
    wait_for_running(tmp_path / "mlflow.db", 2)
    driver.send_signal(stop)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "marking their runs KILLED" in stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "slow")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}
    assert all("interrupted" in r.data.tags["sgdlab.error"] for r in runs)
    assert status_json(tmp_path, "slow")["counts"]["failed"] == 2


def test_an_interrupted_sweep_resumes_from_the_checkpoints_of_its_killed_runs(sweeps_dir, tmp_path):
    """Ctrl-C ends the runs KILLED; the rerun continues each trial from its KILLED run's last checkpoint (as
    after a lost worker), the history up to it copied as it was logged."""
    (sweeps_dir / "slow.yaml").write_text(SLOW)
    every = "train.checkpoint_every=500"
    driver = start_sweep(tmp_path, every)
    store = tmp_path / "mlflow.db"
    wait_for_running(store, 2)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("mlartifacts/slow/*/artifacts/checkpoint/last.pt"))) < 2:
        assert time.time() < deadline, "no checkpoints"
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    rerun = run_sgdlab("sweep", "slow", every, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    client, runs = mlflow_runs(store, "slow")
    killed = {r.data.tags["sgdlab.trial_id"]: r for r in runs if r.info.status == "KILLED"}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(killed) == 2 and len(finished) == 2
    def history(run, up_to: int) -> list:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss") if m.step <= up_to]

    for run in finished:
        before = killed[run.data.tags["sgdlab.trial_id"]]
        source, _, step = run.data.tags["sgdlab.resumed_from"].partition("@")
        assert source == before.info.run_id and int(step) >= 500 and int(step) % 500 == 0
        assert history(before, int(step)) == history(run, int(step))


def test_killed_driver_leaves_stale_runs_that_a_rerun_picks_up(sweeps_dir, tmp_path):
    (sweeps_dir / "slow.yaml").write_text(SLOW)
    driver = start_sweep(tmp_path)
    wait_for_running(tmp_path / "mlflow.db", 2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    # at once, the dead driver's runs are fresh: a rerun leaves them, and its last line says so and until when
    held = run_sgdlab("sweep", "slow", "tracking.stale_after_s=60", cwd=tmp_path)
    assert held.returncode == 0, held.stderr
    assert re.fullmatch(r"2 trials are unfinished, held by the runs of another driver; if it has died, they become "
                        r"stale at \d\d:\d\d:\d\d and `make sweep EXP=slow` then runs them\.",
                        " ".join(held.stderr.strip().splitlines()[-1:][0].split())), held.stderr
    time.sleep(8)  # Ray's reaper stops the workers; their heartbeats age past stale_after_s
    report = status_json(tmp_path, "slow", "tracking.stale_after_s=4")
    assert report["counts"]["stale"] == 2, report

    rerun = run_sgdlab("sweep", "slow", "tracking.stale_after_s=4", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 failed or stale before" in rerun.stderr
    _, runs = mlflow_runs(tmp_path / "mlflow.db", "slow")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and len({r.data.tags["sgdlab.trial_id"] for r in finished}) == 2
    assert all(r.info.status == "FAILED" for r in runs if r not in finished)
    assert status_json(tmp_path, "slow")["counts"]["finished"] == 2
