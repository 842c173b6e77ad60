"""Which trials a command runs: pure functions of the trials and the store's records (no Ray, no MLflow), which
return the jobs to submit.

Sweep (`plan_sweep`): finished trials are skipped; trials running elsewhere (fresh heartbeat) are left alone;
pending, failed, stale and outdated (another numerics version) trials run as a new attempt (next_attempt: highest recorded attempt + 1). A trial that
asks for an end probe (probe.at_end) gets it after training, or, when it finished before without that probe
(same sgdlab.probe_id), as a probe-only job on its finished run's checkpoint.

Resubmit (`plan_resubmit`): exactly the failed and stale trials of a sweep (or those of them named), rerun from
their newest run's recorded config with the command's runtime overrides, as new attempts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from sgdlab.config.schema import ConfigError
from sgdlab.params import param_text
from sgdlab.sweep.expand import Trial
from sgdlab.sweep.identity import probe_id, trial_id
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord, by_trial, finished_run, newest_run, next_attempt, trial_state


@dataclass(frozen=True)
class TrialJob:
    """One trial attempt to run (train, then the end probe if `probe`), or only the end probe of a trial
    that finished before (train=False, train_run_id set)."""

    trial_id: str
    config: dict
    attempt: int
    run_name: str
    train: bool = True
    probe: bool = False
    train_run_id: str | None = None
    probe_attempt: int = 1


@dataclass(frozen=True)
class PackJob:
    """Trials of one shape trained together in one task (each member a TrialJob with train=True)."""

    members: tuple[TrialJob, ...]


@dataclass
class Plan:
    jobs: list[TrialJob] = field(default_factory=list)
    skipped_finished: list[Trial] = field(default_factory=list)
    skipped_running: list[Trial] = field(default_factory=list)
    to_run: list[Trial] = field(default_factory=list)  # trained by a job (a new attempt)
    rerun: list[Trial] = field(default_factory=list)  # failed or stale before, in to_run again
    outdated: list[Trial] = field(default_factory=list)  # recorded under another numerics version, in to_run
    probe_only: list[Trial] = field(default_factory=list)  # finished trials whose end probe runs now
    stale_at: float = 0.0  # when the trials in skipped_running become stale if their heartbeats stop (epoch s)


def plan_sweep(trials: list[Trial], records: list[RunRecord], stale_after_s: float, now: float) -> Plan:
    """The jobs of `sgdlab sweep` from the sweep's trials and every run recorded for it (train and probe)."""
    plan = Plan()
    runs_by_trial = by_trial([r for r in records if r.kind == "train"])
    probes_by_id: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.kind == "probe":
            probes_by_id.setdefault(record.tags.get(tags.PROBE_ID, ""), []).append(record)
    for trial in trials:
        runs = runs_by_trial.get(trial.trial_id, [])
        state = trial_state(runs, stale_after_s, now)
        wants_probe = trial.config["probe"]["at_end"]
        name = tags.run_name(trial.swept, {"data.n_train": param_text(trial.config["data"]["n_train"])})
        if state == "finished":
            plan.skipped_finished.append(trial)
            probes = probes_by_id.get(probe_id(trial.config, trial.trial_id), []) if wants_probe else []
            diverged = finished_run(runs).outcome == "diverged"
            if wants_probe and not diverged and trial_state(probes, stale_after_s, now) in (
                    "pending", "failed", "stale", "outdated"):
                finished = finished_run(runs)
                plan.probe_only.append(trial)
                plan.jobs.append(TrialJob(trial.trial_id, trial.config, 0, name, train=False, probe=True,
                                          train_run_id=finished.run_id, probe_attempt=next_attempt(probes)))
        elif state == "running":
            plan.skipped_running.append(trial)
            beats = [r.heartbeat for r in runs if r.status in ("RUNNING", "SCHEDULED")]
            plan.stale_at = max(plan.stale_at, max(beats) + stale_after_s)
        else:
            if state in ("failed", "stale"):
                plan.rerun.append(trial)
            if state == "outdated":
                plan.outdated.append(trial)
            plan.to_run.append(trial)
            plan.jobs.append(TrialJob(trial.trial_id, trial.config, next_attempt(runs), name, probe=wants_probe))
    return plan


def unplaceable(res: dict, cluster: dict[str, float]) -> str | None:
    """Why a trial with these resources can never run on a cluster with these total resources (None when it
    can): its task, or for a multi-worker trial its W workers together, needs more CPUs or GPUs than there are."""
    workers = res.get("workers_per_trial", 1)
    for key, name, per_task in (("CPU", "cpus", res["cpus"]), ("GPU", "gpu", res["gpu"])):
        need, have = per_task * workers, cluster.get(key, 0)
        if need > have:
            asked = (f"resources.workers_per_trial = {workers} workers x resources.{name} = {per_task:g}"
                     if workers > 1 else f"resources.{name} = {per_task:g}")
            return f"{asked}: a trial needs {need:g} {key}, but the Ray cluster has {have:g}"
    return None


def local_resources(cluster: dict, gpus_asked: bool) -> dict[str, float] | None:
    """The resources of the local Ray that a sweep on `cluster` starts (runtime.connect), known before it starts:
    cluster.num_cpus or this machine's CPUs, and the GPUs torch sees (counted only when gpus_asked: importing
    torch takes a second). None when the sweep joins a running cluster, whose resources only Ray knows."""
    if cluster["address"] or os.environ.get("RAY_ADDRESS"):
        return None
    gpus = 0
    if gpus_asked:
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": cluster["num_cpus"] or os.cpu_count(), "GPU": gpus}


def plan_resubmit(sweep: str, uri: str, records: list[RunRecord], only: list[str],
                  recorded_config: Callable[[str], dict], now: float) -> list[TrialJob]:
    """The jobs of `sgdlab resubmit`: the failed and stale trials among the sweep's train runs in the store at
    `uri` (only those in `only` when it is not empty). recorded_config(run_id): the config a run recorded, with
    the command's overrides applied. Raises ConfigError for a sweep without runs or an unknown trial id."""
    runs = by_trial([r for r in records if r.kind == "train"])
    if not runs:
        raise ConfigError(f"no runs of sweep {sweep!r} in {uri}; run `make sweep EXP={sweep}` first")
    unknown = sorted(set(only) - set(runs))
    if unknown:
        raise ConfigError(f"--trial {unknown[0]}: no such trial in sweep {sweep!r}")
    jobs = []
    for tid, trial_runs in runs.items():
        newest = newest_run(trial_runs)
        stale_after = float(newest.params.get("tracking.stale_after_s", 120))
        if (only and tid not in only) or trial_state(trial_runs, stale_after, now) not in ("failed", "stale"):
            continue
        config = recorded_config(newest.run_id)
        if trial_id(config) != tid:
            raise ConfigError(f"trial {tid}: its recorded config no longer hashes to its id; not resubmitting")
        jobs.append(TrialJob(tid, config, next_attempt(trial_runs), newest.tags.get(tags.RUN_NAME, tid)))
    return jobs
