"""Which trials a sweep command runs: a pure function of the trials and the store's records (no Ray, no MLflow).

finished trials are skipped; trials running elsewhere (fresh heartbeat) are left alone; pending, failed and
stale trials run as a new attempt (attempt = highest recorded attempt + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sgdlab.sweep.expand import Trial
from sgdlab.tracking.query import RunRecord, trial_state


@dataclass
class Plan:
    to_run: list[tuple[Trial, int]] = field(default_factory=list)  # (trial, attempt)
    skipped_finished: list[Trial] = field(default_factory=list)
    skipped_running: list[Trial] = field(default_factory=list)
    rerun: list[Trial] = field(default_factory=list)  # failed or stale before, in to_run again


def make_plan(trials: list[Trial], runs_by_trial: dict[str, list[RunRecord]], stale_after_s: float,
              now: float) -> Plan:
    plan = Plan()
    for trial in trials:
        runs = runs_by_trial.get(trial.trial_id, [])
        state = trial_state(runs, stale_after_s, now)
        if state == "finished":
            plan.skipped_finished.append(trial)
        elif state == "running":
            plan.skipped_running.append(trial)
        else:
            if state in ("failed", "stale"):
                plan.rerun.append(trial)
            plan.to_run.append((trial, max((r.attempt for r in runs), default=0) + 1))
    return plan
