"""A refinement's rounds (sweep/refine.py) on the store: the values of the finished trials read from the records,
the next round's jobs (orchestration/plan.py), and the record of the brackets on the sweep's run: the table
refine/brackets.csv and the metrics refine/<combination>/{lower,upper,estimate,rounds,trials}.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
import time
from pathlib import Path

from sgdlab.jobs.summary import TrialSummary
from sgdlab.orchestration.plan import TrialJob, plan_sweep
from sgdlab.sweep.refine import Bracket, Refinement
from sgdlab.tracking.histories import metric_histories
from sgdlab.tracking.query import RunRecord, by_trial, finished_run, sweep_runs, trial_state
from sgdlab.tracking.store import log_sweep_files, log_sweep_metrics, open_sweep

COLUMNS = ("lower", "upper", "estimate", "rounds", "trials", "added", "status")


def trial_values(uri: str, records: list[RunRecord], refinement: Refinement, stale_after_s: float,
                 now: float) -> dict[str, dict]:
    """{trial_id: {'outcome', final metrics, 'initial:NAME' and 'max:NAME' (the first and largest logged values
    the criterion needs)}} of the trials with a FINISHED run of the current numerics version."""
    finished = {}
    for trial_id, runs in by_trial([r for r in records if r.kind == "train"]).items():
        if trial_state(runs, stale_after_s, now) == "finished":
            finished[trial_id] = finished_run(runs)
    wanted = refinement.predicate.history_metrics
    names = sorted({name for _, name in wanted})
    histories = metric_histories(uri, [r.run_id for r in finished.values()], names) if wanted else {}
    values = {}
    for trial_id, run in finished.items():
        values[trial_id] = {"outcome": run.outcome, **run.metrics}
        for when, key in wanted:
            logged = [value for _, value in histories.get(run.run_id, {}).get(key, [])]
            values[trial_id][f"{when}:{key}"] = history_value(when, logged)
    return values


def history_value(when: str, logged: list[float]) -> float:
    """The first (`initial`) or largest (`max`; +inf if any is not finite) of a metric's logged values, NaN if
    none was logged."""
    if not logged:
        return math.nan
    if when == "initial":
        return logged[0]
    return max(logged) if all(math.isfinite(v) for v in logged) else math.inf


class Rounds:
    """The rounds of one driver command: `next_jobs` after each round (the scheduler's `then`)."""

    def __init__(self, refinement: Refinement, uri: str, sweep: str, stale_after_s: float, say=print):
        self.refinement, self.uri, self.sweep, self.stale_after_s, self.say = refinement, uri, sweep, stale_after_s, say
        self.given_up: set[str] = set()
        self.rounds = 0

    def values(self) -> dict[str, dict]:
        records = sweep_runs(self.uri, self.sweep, kind=None)
        return trial_values(self.uri, records, self.refinement, self.stale_after_s, time.time())

    def next_jobs(self, finished_round: list[TrialSummary]) -> list[TrialJob]:
        """The jobs of the next round: the trials of every open bracket's midpoint that have no finished run."""
        self.given_up |= {s.trial_id for s in finished_round if s.status == "failed"}
        records = sweep_runs(self.uri, self.sweep, kind=None)
        now = time.time()
        trials = self.refinement.advance(trial_values(self.uri, records, self.refinement, self.stale_after_s, now),
                                         self.given_up)
        jobs = plan_sweep(trials, records, self.stale_after_s, now).jobs
        if jobs:
            self.rounds += 1
            open_ = sum(c.status == "waiting" for c in self.refinement.combinations.values())
            self.say(f"refine round {self.rounds}: {len(jobs)} trial{'s' * (len(jobs) != 1)} at the midpoints of "
                     f"{open_} bracket{'s' * (open_ != 1)}")
        return jobs

    def brackets(self) -> list[Bracket]:
        values = self.values()
        self.refinement.advance(values, self.given_up)
        return self.refinement.brackets(values)

    def record(self, brackets: list[Bracket]) -> None:
        """brackets.csv and one metric per bracket end on the sweep's run."""
        handle = open_sweep(self.uri, self.sweep)
        keys = list(brackets[0].combination) if brackets else []
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "brackets.csv"
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([*keys, *COLUMNS])
                for b in brackets:
                    writer.writerow([*(b.combination[k] for k in keys), *(_cell(getattr(b, c)) for c in COLUMNS)])
            log_sweep_files(handle, [path], "refine")
        metrics = {}
        for b in brackets:
            parts = [re.sub(r"[^\w.\- ]", "_", f"{k}_{v}") for k, v in b.combination.items()] or ["all"]
            name = "refine/" + "/".join(parts)
            for column in ("lower", "upper", "estimate", "rounds", "trials"):
                value = getattr(b, column)
                metrics[f"{name}/{column}"] = math.nan if value is None else float(value)
        log_sweep_metrics(handle, metrics)


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}" \
        if isinstance(value, float) else str(value)
