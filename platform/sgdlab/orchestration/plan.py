"""Which trials a sweep command runs: a pure function of the trials and the store's records (no Ray, no MLflow).

finished trials are skipped; trials running elsewhere (fresh heartbeat) are left alone; pending, failed and
stale trials run as a new attempt (attempt = highest recorded attempt + 1). A trial that asks for an end probe
(probe.at_end) gets it after training, or, when it finished before without that probe (same sgdlab.probe_id),
as a probe-only job on its finished run's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sgdlab.sweep.expand import Trial
from sgdlab.tracking.query import RunRecord, trial_state


@dataclass
class Plan:
    to_run: list[tuple[Trial, int]] = field(default_factory=list)  # (trial, attempt)
    skipped_finished: list[Trial] = field(default_factory=list)
    skipped_running: list[Trial] = field(default_factory=list)
    rerun: list[Trial] = field(default_factory=list)  # failed or stale before, in to_run again
    probe_only: list[tuple[Trial, str, int]] = field(default_factory=list)  # (trial, finished train run, attempt)
    probe_after: set[str] = field(default_factory=set)  # trial ids in to_run whose end probe follows training


def make_plan(trials: list[Trial], runs_by_trial: dict[str, list[RunRecord]], stale_after_s: float,
              now: float, probes_by_id: dict[str, list[RunRecord]] | None = None,
              probe_id: Callable[[Trial], str] | None = None) -> Plan:
    """probes_by_id: end-probe runs by sgdlab.probe_id; probe_id(trial) names the end probe a trial asks for."""
    plan, probes_by_id = Plan(), probes_by_id or {}
    for trial in trials:
        runs = runs_by_trial.get(trial.trial_id, [])
        state = trial_state(runs, stale_after_s, now)
        wants_probe = trial.config["probe"]["at_end"] and probe_id is not None
        if state == "finished":
            plan.skipped_finished.append(trial)
            probes = probes_by_id.get(probe_id(trial), []) if wants_probe else []
            diverged = any(r.status == "FINISHED" and r.outcome == "diverged" for r in runs)
            if wants_probe and not diverged and trial_state(probes, stale_after_s, now) in ("pending", "failed", "stale"):
                finished = next(r for r in runs if r.status == "FINISHED")
                plan.probe_only.append((trial, finished.run_id, max((r.attempt for r in probes), default=0) + 1))
        elif state == "running":
            plan.skipped_running.append(trial)
        else:
            if state in ("failed", "stale"):
                plan.rerun.append(trial)
            plan.to_run.append((trial, max((r.attempt for r in runs), default=0) + 1))
            if wants_probe:
                plan.probe_after.add(trial.trial_id)
    return plan
