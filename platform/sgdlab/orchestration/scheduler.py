"""Run trials as Ray tasks: a bounded number in flight, results handled in completion order, a live progress bar.
A job is one trial or a pack of trials (one task, one summary per member). A pack returns when its last member
ends; meanwhile the bar counts its members whose runs have ended, read from a SQLite store every few seconds.

A task whose worker died more often than resources.max_retries allows comes back as a Ray error: the trial's
RUNNING run is ended FAILED with that error, and the sweep goes on. Ctrl-C cancels the tasks in flight, ends
their runs KILLED, and re-raises KeyboardInterrupt.
"""

from __future__ import annotations

import time
from collections import deque

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sgdlab.orchestration.tasks import PackJob, TrialJob, submit
from sgdlab.tracking.query import ended_since
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_running


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[green]{task.fields[finished]} finished[/] [red]{task.fields[failed]} failed[/] "
                               "[cyan]{task.fields[running]} running[/]"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)


POLL_S = 3.0  # seconds between reads of the store for the progress of packs in flight


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def run_trials(jobs: list[TrialJob | PackJob], handle: SweepHandle, max_in_flight: int,
               console: Console | None = None) -> list[dict]:
    """Submit every job, at most max_in_flight at a time; return the trials' summaries in completion order."""
    console = console or Console(stderr=True)
    waiting, in_flight, results = deque(jobs), {}, []
    counts = {"finished": 0, "failed": 0}
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
                    trials = in_flight.pop(ref)
                    try:
                        value = ray.get(ref)
                        wanted = {t.trial_id for t in trials}
                        summaries = [s for s in (value if isinstance(value, list) else [value])
                                     if s["trial_id"] in wanted]
                    except RayError as exc:  # the worker died more often than max_retries allows
                        summaries = [{"trial_id": t.trial_id, "status": "failed", "error": one_line(exc)}
                                     for t in trials]
                        for summary in summaries:
                            end_running(handle, summary["trial_id"], "FAILED", summary["error"])
                            end_running(handle, summary["trial_id"], "FAILED", summary["error"], kind="probe")
                    for summary in summaries:
                        counts[summary["status"]] += 1
                        results.append(summary)
                running = sum(len(trials) for trials in in_flight.values())
                packed = {t.trial_id for trials in in_flight.values() if len(trials) > 1 for t in trials}
                if packed and time.monotonic() - polled >= POLL_S:
                    ended, polled = ended_since(handle.uri, handle.sweep, started_ms) or {}, time.monotonic()
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
