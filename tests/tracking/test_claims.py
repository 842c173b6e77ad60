"""The claim protocol (tracking/claims.py) on a real SQLite store: two drivers' attempts of one trial, in every
interleaving of their reads and writes that a race can produce."""

import sqlite3
import time

import pytest

from sgdlab.jobs.takeover import take_over_all
from sgdlab import numerics
from sgdlab.tracking import tags
from sgdlab.tracking.claims import holder
from sgdlab.tracking.query import RunRecord, sweep_runs, trial_state
from sgdlab.tracking.store import open_sweep
from sgdlab.tracking.writer import PackRuns, RunSpec, TrialRun, end_runs

STALE = 120.0


@pytest.fixture
def drivers(tmp_path):
    """Two drivers' handles on one store: the same sweep, two submissions."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return open_sweep(uri, "race"), open_sweep(uri, "race")


def pack(handle, trial_ids, attempt=1):
    return PackRuns(handle, [RunSpec(t, {"seed": 0}, attempt, t) for t in trial_ids], heartbeat_s=15.0,
                    stale_after_s=STALE)


def end_all(records: PackRuns) -> dict[int, tuple[str, str]]:
    ended = {}
    for m in sorted(records.training):
        records.finish(m, "converged", lambda status, reason, m=m: ended.__setitem__(m, (status, reason)))
    records.close()
    return ended


def statuses(handle):
    return sorted((r.trial_id, r.status, r.outcome) for r in sweep_runs(handle.uri, "race"))


def test_two_drivers_in_the_same_instant_one_trains_and_one_yields_before_training(drivers):
    a, b = drivers
    assert a.submission != b.submission and a.experiment_id == b.experiment_id
    # Both passed rule 1 (neither saw the other's run): both create a run, then check (rule 2).
    runs_a, runs_b = pack(a, ["t0", "t1"]), pack(b, ["t0", "t1"])
    lost_a, lost_b = runs_a.claim(), runs_b.claim()
    assert lost_a == {} and set(lost_b) == {0, 1}  # the earlier run holds each trial
    assert all(reason.startswith("duplicate: trial held by run ") for reason in lost_b.values())
    assert end_all(runs_a) == {0: ("FINISHED", ""), 1: ("FINISHED", "")}
    assert end_all(runs_b) == {}  # nothing left to train
    assert statuses(a) == [("t0", "FINISHED", "converged"), ("t0", "KILLED", "duplicate"),
                           ("t1", "FINISHED", "converged"), ("t1", "KILLED", "duplicate")]
    runs = sweep_runs(a.uri, "race")
    assert {trial_state([r for r in runs if r.trial_id == t], STALE) for t in ("t0", "t1")} == {"finished"}


def test_a_later_run_that_checked_first_still_cannot_finish(drivers):
    """B created its run and checked (rule 2) before A's run was stored; A, the earlier of the two, then stored
    its run and checked: both train. Rule 3 lets only the holder finish, whichever ends first."""
    a, b = drivers
    runs_b = pack(b, ["t0"])
    assert runs_b.claim() == {}  # B saw only itself
    runs_a = pack(a, ["t0"], attempt=1)
    # Make A's run the earlier one, as when A's clock read came first but its commit came last.
    with sqlite3.connect(a.uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE runs SET start_time = start_time - 1000 WHERE run_uuid = ?", (runs_a.runs[0].run_id,))
    assert runs_a.claim() == {}  # A holds the trial: it is the earlier live run
    ended_b = end_all(runs_b)  # B ends first, but does not hold the trial
    assert ended_b[0][0] == "KILLED" and runs_a.runs[0].run_id in ended_b[0][1]
    assert end_all(runs_a) == {0: ("FINISHED", "")}
    assert statuses(a) == [("t0", "FINISHED", "converged"), ("t0", "KILLED", "duplicate")]


def test_a_run_that_checks_after_another_finished_yields(drivers):
    a, b = drivers
    runs_a, runs_b = pack(a, ["t0"]), pack(b, ["t0"])
    assert end_all(runs_a) == {0: ("FINISHED", "")}
    assert "already finished by run" in TrialRun.contest(runs_b.runs[0])
    assert runs_b.runs[0].finish("converged").startswith("duplicate: trial already finished by run")


def test_take_over_leaves_another_drivers_live_run_alone_and_ends_its_own_dead_ones(drivers):
    a, b = drivers
    live_a = pack(a, ["t0", "t1"])  # driver A trains t0 and t1
    dead_b = pack(b, ["t2"])  # driver B's worker died while training t2 (its run stays RUNNING, heartbeat fresh)
    took = take_over_all(b, ["t0", "t1", "t2"], [1, 1, 1], STALE)  # B's retried task
    assert [t.elsewhere.run_id if t.elsewhere else None for t in took] == [*(r.run_id for r in live_a.runs), None]
    assert took[2].elsewhere is None and took[2].attempt == 2
    runs = {r.run_id: r for r in sweep_runs(a.uri, "race")}
    assert [runs[r.run_id].status for r in live_a.runs] == ["RUNNING", "RUNNING"]  # never ended by B
    assert runs[dead_b.runs[0].run_id].status == "FAILED"
    assert runs[dead_b.runs[0].run_id].error.startswith("worker lost")


def test_a_stale_run_of_another_driver_is_taken_over(drivers):
    a, b = drivers
    gone = pack(a, ["t0"])
    with sqlite3.connect(a.uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE tags SET value = ? WHERE run_uuid = ? AND key = ?",
                   (f"{time.time() - 2 * STALE:.3f}", gone.runs[0].run_id, tags.HEARTBEAT))
    (took,) = take_over_all(b, ["t0"], [1], STALE)
    assert took.elsewhere is None and took.attempt == 2
    assert {r.run_id: r.status for r in sweep_runs(a.uri, "race")} == {gone.runs[0].run_id: "FAILED"}


def test_a_run_ended_by_another_process_never_ends_finished(drivers):
    """A worker thought lost (its run ended FAILED by a take-over) that comes back must not end FINISHED."""
    a, b = drivers
    zombie = pack(a, ["t0"])
    end_runs(b, [zombie.runs[0].run_id], "FAILED", "worker lost (test)")
    (status, reason), = end_all(zombie).values()
    assert status == "KILLED" and "ended FAILED by another process (worker lost (test))" in reason
    (run,) = sweep_runs(a.uri, "race")
    assert run.status == "KILLED" and run.outcome == "duplicate"


def record(run_id, status, attempt=1, start=0, beat=0.0, **extra):
    return RunRecord(run_id, status, start, tags={tags.ATTEMPT: str(attempt), tags.HEARTBEAT: str(beat),
                                                  tags.NUMERICS: str(numerics.VERSION), **extra})


@pytest.mark.parametrize("runs, own, expected", [
    ([record("a", "RUNNING", beat=100), record("b", "RUNNING", start=1, beat=100)], None, "a"),
    ([record("a", "RUNNING", beat=0), record("b", "RUNNING", start=1, beat=100)], None, "b"),  # a is stale
    ([record("a", "RUNNING", beat=0), record("b", "RUNNING", start=1, beat=0)], "b", "b"),  # own is alive
    ([record("a", "RUNNING", attempt=2, beat=100), record("b", "RUNNING", start=5, beat=100)], None, "b"),
    ([record("a", "RUNNING", beat=100), record("b", "FINISHED", start=5)], None, "b"),
    ([record("a", "KILLED"), record("b", "FAILED")], None, None),
    ([record("a", "FINISHED", **{tags.NUMERICS: "0"}), record("b", "RUNNING", beat=100)], None, "b"),
])
def test_the_holder_is_the_finished_run_else_the_earliest_live_one(runs, own, expected):
    held = holder(runs, stale_after_s=STALE, now=150.0, own=own)
    assert (held.run_id if held else None) == expected
