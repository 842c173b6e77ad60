"""The plans of `sgdlab sweep` and `sgdlab resubmit` (orchestration/plan.py): pure functions of the trials and the
records, checked on hand-made records without Ray or MLflow."""

import pytest

from sgdlab import numerics
from sgdlab.config.schema import ConfigError
from sgdlab.orchestration.plan import plan_resubmit, plan_sweep, unplaceable
from sgdlab.sweep.expand import expand
from sgdlab.sweep.identity import probe_id
from sgdlab.tracking import tags
from sgdlab.tracking.query import RunRecord, trial_state

NOW = 1_000_000.0
STALE = 120.0


@pytest.fixture(scope="module")
def trials():
    """Six tiny trials (seeds 0-5) that ask for an end probe."""
    return expand(["model.depth=1", "model.width=8", "data.n_train=64", "data.batch_size=8",
                   "optim.temperature=0.01", "probe.at_end=true", "seed=0,1,2,3,4,5"])


def run(trial, status, attempt=1, heartbeat=NOW, kind="train", version=numerics.VERSION, **extra_tags):
    return RunRecord(run_id=f"{trial.trial_id}-{kind}-{attempt}-{status}", status=status, start_time=attempt,
                     tags={tags.TRIAL_ID: trial.trial_id, tags.KIND: kind, tags.ATTEMPT: str(attempt),
                           tags.HEARTBEAT: str(heartbeat), tags.NUMERICS: str(version), tags.OUTCOME: "converged",
                           tags.RUN_NAME: f"name {attempt}", **extra_tags},
                     params={"tracking.stale_after_s": str(STALE)})


def test_each_state_gets_its_job(trials):
    """finished: skipped (its end probe ran); running elsewhere: left alone; failed and stale: rerun as the next
    attempt; pending: a first attempt; outdated (another numerics version): rerun as the next attempt."""
    done, running, failed, stale, pending, outdated = trials
    records = [run(done, "FINISHED"), run(done, "FINISHED", kind="probe",
                                          **{tags.PROBE_ID: probe_id(done.config, done.trial_id)}),
               run(running, "RUNNING", heartbeat=NOW - 10), run(failed, "FAILED"), run(failed, "FAILED", attempt=2),
               run(stale, "RUNNING", heartbeat=NOW - 2 * STALE), run(outdated, "FINISHED", version=0)]
    plan = plan_sweep(trials, records, STALE, NOW)
    assert plan.skipped_finished == [done] and plan.skipped_running == [running] and not plan.probe_only
    assert plan.rerun == [failed, stale] and plan.outdated == [outdated]
    assert plan.stale_at == NOW - 10 + STALE  # when the running trial is stale if its heartbeats stop
    assert [(j.trial_id, j.attempt, j.train, j.probe) for j in plan.jobs] == [
        (failed.trial_id, 3, True, True), (stale.trial_id, 2, True, True), (pending.trial_id, 1, True, True),
        (outdated.trial_id, 2, True, True)]
    assert trial_state([run(outdated, "FINISHED", version=0)], STALE, NOW) == "outdated"
    assert trial_state([run(outdated, "FINISHED", version=0), run(outdated, "FAILED", 2)], STALE, NOW) == "failed"


def test_a_finished_trial_without_its_end_probe_gets_a_probe_only_job(trials):
    done = trials[0]
    pid = {tags.PROBE_ID: probe_id(done.config, done.trial_id)}
    records = [run(done, "FINISHED"), run(done, "FAILED", kind="probe", **pid)]
    (job,) = plan_sweep([done], records, STALE, NOW).jobs
    assert (job.train, job.probe, job.train_run_id, job.probe_attempt) == (False, True, records[0].run_id, 2)
    diverged = [RunRecord(**{**records[0].__dict__, "tags": {**records[0].tags, tags.OUTCOME: "diverged"}})]
    assert plan_sweep([done], diverged, STALE, NOW).jobs == []  # nothing to measure on a diverged trial


def test_resources_the_cluster_can_never_provide_are_named():
    res = {"cpus": 1, "gpu": 0, "workers_per_trial": 1}
    cluster = {"CPU": 2.0}
    assert unplaceable(res, cluster) is None
    assert unplaceable({**res, "gpu": 1}, cluster) == "resources.gpu = 1: a trial needs 1 GPU, but the Ray cluster has 0"
    assert unplaceable({**res, "cpus": 1.5, "workers_per_trial": 2}, cluster) == (
        "resources.workers_per_trial = 2 workers x resources.cpus = 1.5: a trial needs 3 CPU, but the Ray cluster "
        "has 2")
    assert unplaceable({**res, "gpu": 0.5}, {"CPU": 2.0, "GPU": 1.0}) is None


def test_resubmit_reruns_exactly_the_failed_and_stale_trials_from_their_recorded_configs(trials):
    done, running, failed, stale, _, outdated = trials
    records = [run(done, "FINISHED"), run(running, "RUNNING"), run(failed, "FAILED"),
               run(stale, "RUNNING", heartbeat=NOW - 2 * STALE), run(outdated, "FINISHED", version=0)]
    configs = {r.run_id: t.config for r, t in zip(records, trials[:4] + trials[5:])}
    jobs = plan_resubmit("s", "sqlite:///x", records, [], configs.__getitem__, NOW)
    assert [(j.trial_id, j.attempt, j.run_name) for j in jobs] == [(failed.trial_id, 2, "name 1"),
                                                                  (stale.trial_id, 2, "name 1")]
    assert [j.trial_id for j in plan_resubmit("s", "sqlite:///x", records, [stale.trial_id], configs.__getitem__,
                                              NOW)] == [stale.trial_id]
    with pytest.raises(ConfigError, match="no such trial"):
        plan_resubmit("s", "sqlite:///x", records, ["nope"], configs.__getitem__, NOW)
    with pytest.raises(ConfigError, match="no runs of sweep 's' in sqlite:///x"):
        plan_resubmit("s", "sqlite:///x", [], [], configs.__getitem__, NOW)
    with pytest.raises(ConfigError, match="no longer hashes to its id"):
        plan_resubmit("s", "sqlite:///x", records, [failed.trial_id], lambda run_id: done.config, NOW)
