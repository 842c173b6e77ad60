"""Run trials as Ray tasks: a bounded number in flight, results handled in completion order, a live progress bar.

A task whose worker died more often than resources.max_retries allows comes back as a Ray error: the trial's
RUNNING run is ended FAILED with that error, and the sweep goes on. Ctrl-C cancels the tasks in flight, ends
their runs KILLED, and re-raises KeyboardInterrupt.
"""

from __future__ import annotations

from collections import deque

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sgdlab.orchestration.tasks import TrialJob, submit
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import end_running


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[green]{task.fields[finished]} finished[/] [red]{task.fields[failed]} failed[/] "
                               "[cyan]{task.fields[running]} running[/]"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def run_trials(jobs: list[TrialJob], handle: SweepHandle, max_in_flight: int,
               console: Console | None = None) -> list[dict]:
    """Submit every job, at most max_in_flight at a time; return the summaries in completion order."""
    console = console or Console(stderr=True)
    waiting, in_flight, results = deque(jobs), {}, []
    counts = {"finished": 0, "failed": 0}
    with progress_bar(console) as bar:
        task = bar.add_task(handle.sweep, total=len(jobs), finished=0, failed=0, running=0)
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < max_in_flight:
                    job = waiting.popleft()
                    in_flight[submit(job, handle)] = job
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    job = in_flight.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except RayError as exc:  # the worker died more often than max_retries allows
                        summary = {"trial_id": job.trial_id, "status": "failed", "error": one_line(exc)}
                        end_running(handle, job.trial_id, "FAILED", summary["error"])
                        end_running(handle, job.trial_id, "FAILED", summary["error"], kind="probe")
                    counts[summary["status"]] += 1
                    results.append(summary)
                bar.update(task, completed=len(results), running=len(in_flight), **counts)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted: cancelling {len(in_flight)} trials in flight and marking their runs KILLED")
            for ref in in_flight:
                ray.cancel(ref, force=True)
            for job in in_flight.values():
                for kind in ("train", "probe"):
                    end_running(handle, job.trial_id, "KILLED", "interrupted by the user (Ctrl-C)", kind=kind)
            raise
    return results
