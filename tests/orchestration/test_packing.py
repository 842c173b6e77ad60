"""Packing (orchestration/packing.py): the scheduler groups trials by shape under exec.pack; a packed sweep through
Ray and MLflow records the same runs as an unpacked one, survives a killed worker and resubmits failures."""

import math

import pytest
from mlflow.tracking import MlflowClient

from sgdlab.config.compose import Composer
from sgdlab.orchestration.packing import AUTO_MIN, pack_jobs, shape_key
from sgdlab.orchestration.plan import PackJob, TrialJob

from conftest import TINY, mlflow_runs, run_sgdlab, status_json

REL = 1e-6


@pytest.fixture(scope="module")
def composer():
    return Composer()


def trial_jobs(composer, overrides: list[list[str]]) -> list[TrialJob]:
    configs = composer.many([["optim.lr=0.1"] + o for o in overrides])
    return [TrialJob(f"t{i}", config, 1, f"t{i}") for i, config in enumerate(configs)]


def test_pack_jobs_groups_by_shape_and_respects_exec(composer):
    per_member = [["model.alpha=2", "seed=3", "optim.lr=0.2", "train.max_steps=7", "fault.raise_at_step=3"]]
    assert shape_key(composer(["optim.lr=0.1"])) == shape_key(composer(per_member[0]))
    assert shape_key(composer(["optim.lr=0.1"])) != shape_key(composer(["optim.lr=0.1", "data.n_train=128"]))

    seeds = [[f"seed={s}", "exec.pack=on"] for s in range(10)]
    wide = [[f"seed={s}", "exec.pack=on", "model.width=16"] for s in range(3)]
    jobs = pack_jobs(trial_jobs(composer, seeds + wide), slots=2)
    assert sorted(len(j.members) for j in jobs if isinstance(j, PackJob)) == [2, 5, 5]  # and one wide trial alone
    assert pack_jobs(trial_jobs(composer, [s + ["exec.pack_size=4"] for s in seeds]), 2)[-1].members[-1].config[
        "seed"] == 9
    assert all(isinstance(j, TrialJob) for j in pack_jobs(trial_jobs(composer, [[f"seed={s}"] for s in range(
        AUTO_MIN - 1)]), 2))  # auto: too few to pack
    assert len(pack_jobs(trial_jobs(composer, [[f"seed={s}"] for s in range(AUTO_MIN)]), 1)) == 1
    for never in (["exec.pack=off"], ["exec.pack=on", "probe.every=10"]):
        assert all(isinstance(j, TrialJob) for j in pack_jobs(trial_jobs(
            composer, [[f"seed={s}"] + never for s in range(20)]), 2))


@pytest.mark.slow
def test_packed_sweep_equals_unpacked_survives_a_killed_worker_and_resubmits(sweeps_dir, tmp_path, shared_ray):
    """TINY (4 trials) in float64: packed with the worker SIGKILLed at step 30 of the seed-1 members (Ray
    retries the pack; all four members, which run 200 steps, resume from their step-20 checkpoints) against unpacked; then a raised fault
    in a packed sweep fails only the seed-1 members, and resubmit finishes them."""
    (sweeps_dir / "tiny.yaml").write_text(TINY)
    packed, plain, faulty = (tmp_path / d for d in ("packed", "plain", "faulty"))
    for folder in (packed, plain, faulty):
        folder.mkdir()
    common = ["train.dtype=float64", "train.checkpoint_every=10"]
    out = run_sgdlab("sweep", "tiny", "exec.pack=on", "exec.pack_size=4", "fault.kill_at_step=30", "fault.seeds=[1]",
                     *common, cwd=packed)
    assert out.returncode == 0, out.stderr
    assert "4 trials in 1 packs" in out.stderr
    assert run_sgdlab("sweep", "tiny", "exec.pack=off", *common, cwd=plain).returncode == 0
    _, packed_runs = mlflow_runs(packed / "mlflow.db", "tiny")
    _, plain_runs = mlflow_runs(plain / "mlflow.db", "tiny")
    finished = {r.data.tags["sgdlab.trial_id"]: r for r in packed_runs if r.info.status == "FINISHED"}
    reference = {r.data.tags["sgdlab.trial_id"]: r for r in plain_runs}
    assert len(finished) == 4 and set(finished) == set(reference)
    lost = {r.info.run_id: r for r in packed_runs if r.info.status == "FAILED"}
    assert len(lost) == 4 and all("worker lost" in r.data.tags["sgdlab.error"] for r in lost.values())
    client = MlflowClient(f"sqlite:///{packed / 'mlflow.db'}")
    plain_client = MlflowClient(f"sqlite:///{plain / 'mlflow.db'}")
    for tid, run in finished.items():
        assert run.data.tags["sgdlab.resumed_from"].endswith("@20") and run.data.tags["sgdlab.attempt"] == "2"
        for key, value in reference[tid].data.metrics.items():
            if key != "wall_time":
                assert math.isclose(run.data.metrics[key], value, rel_tol=REL, abs_tol=1e-12), key
        # The resumed member's curves are whole: the history up to its checkpoint is copied from the lost run.
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss"))
        expected = sorted((m.step, m.value) for m in plain_client.get_metric_history(reference[tid].info.run_id,
                                                                                     "train_loss"))
        assert [s for s, _ in history] == [s for s, _ in expected] == list(range(0, 201, 20))  # from step 0
        assert all(math.isclose(v, w, rel_tol=REL, abs_tol=1e-12) for (_, v), (_, w) in zip(history, expected))
        before = run.data.tags["sgdlab.resumed_from"].split("@")[0]
        lost = sorted((m.step, m.value) for m in client.get_metric_history(before, "train_loss"))
        assert lost == history[:2]  # steps 0 and 20, up to its checkpoint

    out = run_sgdlab("sweep", "tiny", "exec.pack=on", "fault.raise_at_step=5", "fault.seeds=[1]", cwd=faulty)
    assert out.returncode == 1
    report = status_json(faulty, "tiny")
    assert report["counts"]["failed"] == 2 and report["counts"]["finished"] == 2
    _, runs = mlflow_runs(faulty / "mlflow.db", "tiny")
    assert {r.data.params["seed"] for r in runs if r.info.status == "FAILED"} == {"1"}
    assert all("fault.raise_at_step=5" in r.data.tags["sgdlab.error"] for r in runs if r.info.status == "FAILED")
    again = run_sgdlab("resubmit", "tiny", cwd=faulty)
    assert again.returncode == 0, again.stderr
    assert status_json(faulty, "tiny")["counts"]["finished"] == 4
