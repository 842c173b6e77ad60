"""Run a command's jobs on Ray: connect, pack same-shape trials, a bounded number of tasks in flight, results
handled in completion order, a live progress bar. A job is one trial or a pack of trials (one task, one summary
per member). A pack returns when its last member ends; meanwhile the bar counts its members whose runs have
ended, read from a SQLite store every few seconds.

A task whose worker died more often than resources.max_retries allows comes back as a Ray error: the trial's
RUNNING runs are ended FAILED with that error, and the sweep goes on. Ctrl-C (or SIGTERM) cancels the tasks in
flight, ends their runs KILLED, and re-raises KeyboardInterrupt. Either way only runs of this driver's submission
are ended, never those of another driver working on the same sweep (tracking/claims.py).
"""

from __future__ import annotations

import sqlite3
import signal
import time
from collections import deque
from typing import Callable

import ray
from ray.exceptions import RayError, RayTaskError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sgdlab.config.schema import ConfigError
from sgdlab.jobs.summary import TrialSummary
from sgdlab.orchestration.packing import pack_jobs, task_slots
from sgdlab.orchestration.plan import PackJob, TrialJob, unplaceable
from sgdlab.orchestration.runtime import address, connect, shutdown
from sgdlab.orchestration.tasks import submit, warm_up
from sgdlab.tracking.query import by_trial, ended_since, state_counts, sweep_runs
from sgdlab.tracking.record_store import store_for
from sgdlab.tracking.store import SweepHandle, open_sweep, sweep_ended, sweep_working
from sgdlab.tracking.tags import one_line
from sgdlab.tracking.writer import end_running

POLL_S = 3.0  # seconds between reads of the store for the progress of packs in flight


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[green]{task.fields[finished]} finished[/] [red]{task.fields[failed]} failed[/] "
                               "[cyan]{task.fields[running]} running[/]"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)


def run_jobs(sweep: str, jobs: list[TrialJob], config: dict, uri: str, description: str = "",
             console: Console | None = None, announce: str = "",
             then: Callable[[list[TrialSummary]], list[TrialJob]] | None = None,
             view_params: list[str] | None = None, definition: dict[str, str] | None = None) -> list[TrialSummary]:
    """Connect to Ray, refuse (ConfigError) jobs whose resources the cluster can never provide, open the sweep's
    store (the database exists before any worker starts), warm a local Ray's workers up (they import the job
    modules), pack the jobs for the cluster's task slots (exec.pack) and run them; `config`: any of the jobs'
    configs (its cluster and resources groups are used); `announce` is printed once the jobs fit the cluster.
    `then(summaries of the round)`, if given, returns the next round's jobs (a refinement's), run on the same
    Ray connection until it returns none; the summaries of every round are returned. `view_params`: the swept
    params, shown as columns of the sweep's trials view in the MLflow UI (tracking.store.trials_view);
    `definition`: tags of the sweep file on the sweep's run (open_sweep)."""
    console = console or Console(stderr=True)
    resources = connect(config["cluster"])
    try:
        for job in jobs:
            problem = unplaceable(job.config["resources"], resources)
            if problem:
                raise ConfigError(problem)
        if announce:
            console.print(announce)
        handle = open_sweep(uri, sweep, description, view_params, definition)
        sweep_working(handle)
        store_for(uri)  # warns here, in the driver, when records will go through the slower client store
        if not address(config["cluster"]):
            warm_up()
        # After Ray's own handlers: SIGTERM (a batch scheduler, `kill`) stops like Ctrl-C, and Ctrl-C works even
        # where a shell started the driver with SIGINT ignored (background jobs).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        max_in_flight = config["resources"]["max_in_flight"] or max(1, int(2 * resources.get("CPU", 1)))
        results: list[TrialSummary] = []
        try:
            while jobs:  # a refinement's later rounds ask for the resources of its first
                packed = pack_jobs(jobs, task_slots(resources, config["resources"]))
                packs = [len(job.members) for job in packed if isinstance(job, PackJob)]
                if packs:
                    console.print(f"packed: {sum(packs)} trials in {len(packs)} packs of {min(packs)}-{max(packs)} "
                                  "(exec.pack)")
                round_results = run_trials(packed, handle, max_in_flight, console)
                results += round_results
                jobs = then(round_results) if then else []
        except KeyboardInterrupt:
            sweep_ended(handle, "KILLED", sweep_counts(handle, config))
            raise
        sweep_ended(handle, "FAILED" if any(r.status == "failed" for r in results) else "FINISHED",
                    sweep_counts(handle, config))
        return results
    finally:
        shutdown()


def sweep_counts(handle: SweepHandle, config: dict) -> dict[str, int]:
    """The sweep's recorded trials by state (finished, failed, ...) and its finished ones by outcome."""
    runs = by_trial(sweep_runs(handle.uri, handle.sweep))
    counts, outcomes = state_counts(runs, runs, config["tracking"]["stale_after_s"], time.time())
    return {**counts, **outcomes}


def run_trials(jobs: list[TrialJob | PackJob], handle: SweepHandle, max_in_flight: int,
               console: Console | None = None) -> list[TrialSummary]:
    """Submit every job, at most max_in_flight at a time; return the trials' summaries in completion order."""
    console = console or Console(stderr=True)
    waiting, in_flight, results = deque(jobs), {}, []
    counts = {"finished": 0, "failed": 0, "elsewhere": 0}  # elsewhere: held by another driver's run
    total = sum(len(job.members) if isinstance(job, PackJob) else 1 for job in jobs)
    started_ms, polled, ended = int(time.time() * 1000), time.monotonic(), {}
    with progress_bar(console) as bar:
        task = bar.add_task(handle.sweep, total=total, finished=0, failed=0, running=0)
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < max_in_flight:
                    in_flight.update(submit(waiting.popleft(), handle))
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    summaries = _summaries(ref, in_flight.pop(ref), handle)
                    for summary in summaries:
                        counts[summary.status] += 1
                        results.append(summary)
                running = sum(len(trials) for trials in in_flight.values())
                packed = {t.trial_id for trials in in_flight.values() if len(trials) > 1 for t in trials}
                if packed and time.monotonic() - polled >= POLL_S:
                    ended, polled = live_ended(handle, started_ms, ended), time.monotonic()
                live = [ended[t] for t in packed if t in ended]  # members of packs in flight that have ended
                live_finished = sum(status == "FINISHED" for status in live)
                bar.update(task, completed=len(results) + len(live), running=running - len(live),
                           finished=counts["finished"] + live_finished,
                           failed=counts["failed"] + len(live) - live_finished)
        except KeyboardInterrupt:
            bar.stop()
            trials = [t for group in in_flight.values() for t in group]
            console.print(f"interrupted: cancelling {len(trials)} trials in flight and marking their runs KILLED")
            for ref in in_flight:
                ray.cancel(ref, force=True)
            for trial in trials:
                for kind in ("train", "probe"):
                    end_running(handle, trial.trial_id, "KILLED", "interrupted by the user (Ctrl-C)", kind=kind)
            raise
    return results


def live_ended(handle: SweepHandle, since_ms: int, last: dict[str, str]) -> dict[str, str]:
    """The trials of packs in flight that have ended (query.ended_since), for the progress bar. A poll that
    cannot read the store keeps the last answer: the bar is cosmetic and must never stop a sweep (SQLite has
    answered 'disk I/O error' to this read under load, twice in one sweep, while the trials kept running)."""
    try:
        return ended_since(handle.uri, handle.sweep, since_ms) or {}
    except sqlite3.Error:
        return last


def _summaries(ref: ray.ObjectRef, trials: list[TrialJob], handle: SweepHandle) -> list[TrialSummary]:
    """The summaries of `trials` that a finished task returned, or failed ones (their RUNNING runs ended FAILED)
    when its worker died more often than max_retries allows."""
    try:
        value = ray.get(ref)
    except RayError as exc:  # a task's own exception (its error line, not Ray's traceback), or a lost worker
        error = one_line(exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc)
        for trial in trials:
            end_running(handle, trial.trial_id, "FAILED", error)
            end_running(handle, trial.trial_id, "FAILED", error, kind="probe")
        return [TrialSummary.failed(t.trial_id, error) for t in trials]
    wanted = {t.trial_id for t in trials}
    return [s for s in (value if isinstance(value, list) else [value]) if s.trial_id in wanted]
