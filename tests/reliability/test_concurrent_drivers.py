"""Several `sgdlab sweep` drivers started together on one sweep and one store (a second terminal, a batch job
retried by its scheduler): every trial ends with exactly one FINISHED run, no live run is ended by another
driver, and every driver exits 0. The drivers share the session's Ray head (the store is what they race on);
bench/race_bench.py races drivers that each start a local Ray, as a new user's would."""

import os
import subprocess
import sys

import pytest

from sgdlab.tracking.query import by_trial, sweep_runs, trial_state

from conftest import REPO, SGDLAB, without_report

RACE = (REPO / "bench" / "race.yaml").read_text()  # also raced by bench/race_bench.py


def start_drivers(n: int, cwd, sweep: str, *overrides: str, env: dict | None = None) -> list[subprocess.Popen]:
    full_env = {**os.environ, **(env or {})}
    return [subprocess.Popen([*SGDLAB, *without_report(["sweep", sweep, *overrides])], cwd=cwd, env=full_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]


def wait_all(drivers: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    errors = [d.communicate(timeout=timeout)[1] for d in drivers]
    return [(d.returncode, e) for d, e in zip(drivers, errors)]


def check_race(uri: str, sweep: str, results: list[tuple[int, str]], n_trials: int = 6) -> dict[str, int]:
    """Every driver exited 0, every trial has exactly one FINISHED run and no RUNNING one, no FINISHED run says
    it was lost; returns how the drivers shared the work."""
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
    runs = sweep_runs(uri, sweep)
    trials = by_trial(runs)
    assert len(trials) == n_trials
    for trial_id, trial_runs in trials.items():
        statuses = [r.status for r in trial_runs]
        assert statuses.count("FINISHED") == 1, (trial_id, [(r.status, r.error) for r in trial_runs])
        assert "RUNNING" not in statuses, trial_id
        assert trial_state(trial_runs, 120) == "finished"
    assert not [r for r in runs if r.status == "FINISHED" and r.error], "a FINISHED run carries an error"
    lost = [r for r in runs if "worker lost" in r.error]
    assert not lost, [(r.status, r.error) for r in lost]  # no driver took another's live run for dead
    return {"runs": len(runs), "duplicates": sum(r.outcome == "duplicate" for r in runs)}


@pytest.mark.slow
@pytest.mark.parametrize("n_drivers, overrides", [(2, ()), (2, ("exec.pack=on", "exec.pack_size=3")), (4, ())])
def test_drivers_started_together_in_an_empty_folder(n_drivers, overrides, sweeps_dir, tmp_path, shared_ray):
    """The store does not exist yet: the drivers race on creating it too. A race of 2 drivers with trials alone,
    one packed, one of 4 (bench/race_bench.py runs many more)."""
    (sweeps_dir / "race.yaml").write_text(RACE)
    results = wait_all(start_drivers(n_drivers, tmp_path, "race", *overrides))
    shared = check_race(f"sqlite:///{tmp_path / 'mlflow.db'}", "race", results)
    print(f"\n{n_drivers} drivers {' '.join(overrides)}: {shared}")


@pytest.mark.slow
def test_two_drivers_on_an_mlflow_server_on_postgresql(sweeps_dir, tmp_path, shared_ray):
    sys.path.insert(0, str(REPO / "tests" / "cluster"))
    from cluster_helpers import mlflow_server, postgres_reachable

    reason = postgres_reachable()
    if reason:
        pytest.fail(f"{reason} (the machine's PostgreSQL is expected on 127.0.0.1:5432)")
    with mlflow_server(tmp_path) as (url, _, _):
        for race in range(2):  # a new sweep (experiment) per race: the second on a server already in use
            (sweeps_dir / f"race{race}.yaml").write_text(RACE)
            results = wait_all(start_drivers(2, tmp_path, f"race{race}", env={"MLFLOW_TRACKING_URI": url}))
            shared = check_race(url, f"race{race}", results)
            print(f"\n2 drivers on {url}, race {race}: {shared}")
