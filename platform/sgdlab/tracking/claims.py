"""The claim protocol: at most one FINISHED run per trial (of one numerics version), and no live run ended by
another driver, however many drivers work on one store (SQLite, or an MLflow server over REST).

A trial is *held* by its FINISHED run, else by its earliest live RUNNING run, in the order (attempt, start_time,
run_id). Live: a heartbeat younger than tracking.stale_after_s (a packed run's heartbeat is its pack's newest).
Every run carries the id of the driver command that submitted it (tag sgdlab.submission). The protocol needs
only reads and plain writes, so it works through MLflow's REST API as well as on a database:

1. Before a training job creates a run (jobs/takeover.py): a trial with a FINISHED run is done; a trial with a
   live RUNNING run of another submission is left to it (no run is created). RUNNING runs of the job's own
   submission (Ray retries a task only after its worker died) or with a stale heartbeat are orphans: they are
   ended FAILED ('worker lost') and resumed from.
2. Right after creating its run, the job reads the trial's runs again: when another run holds the trial (two
   drivers passed rule 1 at the same moment), its run ends KILLED with outcome 'duplicate' and it does not train.
3. Before writing FINISHED it reads them once more and finishes only if its run is still RUNNING and holds the
   trial; otherwise it ends KILLED, outcome 'duplicate'.

Why two FINISHED runs cannot happen: of two runs that both pass rule 3, the later check would see the earlier
FINISHED, unless both checks ran before either finish; then each saw the other RUNNING and live (each was
created before the other's check, or rule 2 of the later one would have seen the older run), and both compute
the same order, in which only one run is first. This assumes that a live worker refreshes its heartbeat within
stale_after_s (a process stopped for longer may be taken for dead) and that clocks of the nodes agree to within
a training job's length (start_time is the writer's clock). Runs with outcome 'duplicate' never trained their
trial: trial_state ignores them.
"""

from __future__ import annotations

from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord, current


def _order(run: RunRecord) -> tuple:
    return run.attempt, run.start_time, run.run_id


def is_live(run: RunRecord, stale_after_s: float, now: float) -> bool:
    """RUNNING with a heartbeat younger than stale_after_s."""
    return run.status == "RUNNING" and now - run.heartbeat <= stale_after_s


def holder(runs: list[RunRecord], stale_after_s: float, now: float, own: str | None = None) -> RunRecord | None:
    """The run that holds the trial: its FINISHED run (current numerics), else its earliest live RUNNING run;
    the run `own` (the caller's, which is alive) counts as live whatever its stored heartbeat."""
    runs = current(runs)
    finished = [r for r in runs if r.status == "FINISHED"]
    if finished:
        return min(finished, key=_order)
    live = [r for r in runs if r.status == "RUNNING" and (r.run_id == own or is_live(r, stale_after_s, now))]
    return min(live, key=_order, default=None)


def running_elsewhere(runs: list[RunRecord], submission: str, stale_after_s: float, now: float) -> RunRecord | None:
    """Rule 1: the live RUNNING run (current numerics) of another submission that holds the trial, if any."""
    others = [r for r in runs if r.tags.get(tags.SUBMISSION) != submission]
    held = holder(others, stale_after_s, now)
    return held if held is not None and held.status == "RUNNING" else None


def orphans(runs: list[RunRecord], submission: str, stale_after_s: float, now: float) -> list[RunRecord]:
    """Rule 1: RUNNING runs whose worker is gone: this submission's own (Ray retried their task), and stale ones."""
    return [r for r in runs if r.status == "RUNNING"
            and (r.tags.get(tags.SUBMISSION) == submission or not is_live(r, stale_after_s, now))]


def contest(runs: list[RunRecord], run_id: str, stale_after_s: float, now: float) -> str | None:
    """Rules 2 and 3: None when the run `run_id` holds its trial; otherwise why it must end as a duplicate (one
    line, the `sgdlab.error` of that run)."""
    own = next((r for r in runs if r.run_id == run_id), None)
    if own is not None and own.status != "RUNNING":
        return f"duplicate: this run was ended {own.status} by another process ({own.error or 'no reason given'})"
    held = holder(runs, stale_after_s, now, own=run_id)
    if held is None or held.run_id == run_id:
        return None
    if held.status == "FINISHED":
        return f"duplicate: trial already finished by run {held.run_id}"
    return f"duplicate: trial held by run {held.run_id} (attempt {held.attempt}, started earlier, still running)"
