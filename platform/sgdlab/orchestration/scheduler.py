"""Run trials as Ray tasks: a bounded number in flight, results handled in completion order, a live progress bar.

A task whose worker died more often than resources.max_retries allows comes back as a Ray error: its orphaned
RUNNING run is marked FAILED with the error, and the sweep goes on.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sgdlab.orchestration.tasks import submit_train
from sgdlab.sweep.expand import Trial
from sgdlab.tracking.store import SweepHandle
from sgdlab.tracking.writer import fail_orphans


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[green]{task.fields[finished]} finished[/] [red]{task.fields[failed]} failed[/] "
                               "[cyan]{task.fields[running]} running[/]"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=False)


def run_trials(jobs: list[tuple[Trial, int]], handle: SweepHandle, max_in_flight: int,
               console: Console | None = None, on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Submit every (trial, attempt), at most max_in_flight at a time; return the summaries in completion order."""
    console = console or Console(stderr=True)
    waiting, in_flight, results = deque(jobs), {}, []
    counts = {"finished": 0, "failed": 0}
    with progress_bar(console) as bar:
        task = bar.add_task(handle.sweep, total=len(jobs), finished=0, failed=0, running=0)
        while waiting or in_flight:
            while waiting and len(in_flight) < max_in_flight:
                trial, attempt = waiting.popleft()
                in_flight[submit_train(trial, attempt, handle)] = trial
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                trial = in_flight.pop(ref)
                try:
                    summary = ray.get(ref)
                except RayError as exc:
                    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"[:500]
                    fail_orphans(handle, trial.trial_id, error)
                    summary = {"trial_id": trial.trial_id, "status": "failed", "error": error}
                counts[summary["status"]] += 1
                results.append(summary)
                on_result(summary)
            bar.update(task, completed=len(results), running=len(in_flight), **counts)
    return results
