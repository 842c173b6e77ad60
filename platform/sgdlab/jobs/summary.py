"""What a job reports of one trial attempt to the scheduler and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrialSummary:
    """One trial attempt: its train run (and end probe run, if one ran), how it ended, its final metrics.
    status 'failed' means an exception or a lost worker; `error` is then one line and `failed_stage` says whether
    training or the end probe failed. 'elsewhere': another driver's run holds the trial (tracking/claims.py), and
    `run_id` is that run."""

    trial_id: str
    status: str  # finished | failed | elsewhere
    run_id: str | None = None  # the job's run: the train run (a probe job's own summary: the probe run)
    outcome: str | None = None  # converged | diverged | max_steps, for a finished train run
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    probe_run_id: str | None = None  # the end probe's run, when one ran
    failed_stage: str | None = None  # train | probe, when failed

    @classmethod
    def failed(cls, trial_id: str, error: str, run_id: str | None = None, stage: str = "train") -> "TrialSummary":
        return cls(trial_id, "failed", run_id, error=error, failed_stage=stage)

    @classmethod
    def elsewhere(cls, trial_id: str, holder: str, reason: str = "") -> "TrialSummary":
        return cls(trial_id, "elsewhere", holder, error=reason or f"held by run {holder} of another driver")
