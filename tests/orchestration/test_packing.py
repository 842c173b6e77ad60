"""Packed execution: members of a pack end with the numbers they have when trained alone (float64, 1e-6
relative), stop on their own, fail on their own; the scheduler groups trials by shape; a packed sweep through
Ray and MLflow records the same runs as an unpacked one, survives a killed worker and resubmits failures."""

import math

import pytest
import torch

from sgdlab.config.compose import Composer
from sgdlab.orchestration.packing import AUTO_MIN, pack_jobs, shape_key
from sgdlab.orchestration.plan import PackJob, TrialJob
from sgdlab.training.loop import Member, train, train_pack

from conftest import TINY, mlflow_runs, run_sgdlab, status_json

REL = 1e-6


@pytest.fixture(scope="module")
def composer():
    return Composer()


def assert_same(alone, packed):
    assert (packed.outcome, packed.steps) == (alone.outcome, alone.steps)
    for key, value in alone.metrics.items():
        assert packed.metrics[key] == pytest.approx(value, rel=REL, abs=1e-12), key
    for key, value in alone.params.items():
        torch.testing.assert_close(packed.params[key], value, rtol=REL, atol=1e-12)


def member_configs(composer, optim: str, loss: str) -> list[dict]:
    """Six members of one shape with their own lr, alpha, seed and max_steps: they stop at different steps
    (fitted, threshold, max_steps), and the last one's lr is far beyond stability, so it diverges."""
    base = ["model.depth=2", "model.width=16", "data.n_train=32", "data.n_test=64", "data.batch_size=8",
            f"optim={optim}", f"loss={loss}", "train.dtype=float64", "train.log_every=7", "train.max_steps=60",
            "train.divergence_loss=1e6"]
    stable = 1e-3 if optim == "adam" else 0.5
    members = [("model.alpha=1", f"optim.lr={stable}", "seed=0"),
               ("model.alpha=4", f"optim.lr={stable / 2}", "seed=1"),
               ("model.alpha=1", f"optim.lr={stable}", "seed=2", "train.max_steps=20"),
               ("model.alpha=16", f"optim.lr={stable * 2}", "seed=3"),
               ("model.alpha=1", f"optim.lr={stable / 4}", "seed=4", "train.max_steps=35"),
               ("model.alpha=1", "optim.lr=1e7", "seed=5")]
    return [composer(base + list(m)) for m in members]


@pytest.mark.parametrize("optim,loss", [("sgd", "hinge"), ("adam", "hinge"), ("sgd", "cross_entropy"),
                                        ("adam", "cross_entropy"), ("sgd", "mse")])
def test_packed_members_equal_trials_trained_alone(composer, optim, loss):
    configs = member_configs(composer, optim, loss)
    alone = [train(cfg) for cfg in configs]
    logs = [[] for _ in configs]
    ended = []
    packed = train_pack([Member(cfg, on_log=lambda s, m, i=i: logs[i].append(s), on_end=ended.append)
                         for i, cfg in enumerate(configs)])
    for a, p in zip(alone, packed):
        assert_same(a, p)
    assert alone[-1].outcome == "diverged" and all(a.outcome != "diverged" for a in alone[:-1])
    assert len({a.steps for a in alone}) >= 3  # members really stop at different steps
    assert [r.steps for r in ended] == sorted(r.steps for r in packed)  # each ended when it stopped
    for log, result in zip(logs, packed):
        assert log[-1] == result.steps and len(log) == len(set(log))


def test_a_member_whose_callback_raises_fails_alone(composer):
    configs = member_configs(composer, "sgd", "hinge")[:3]

    def boom(step):
        if step == 5:
            raise RuntimeError("injected")

    packed = train_pack([Member(configs[0]), Member(configs[1], on_step=boom), Member(configs[2])])
    assert packed[1].outcome == "error" and str(packed[1].error) == "injected" and packed[1].steps == 4
    for i in (0, 2):
        assert_same(train(configs[i]), packed[i])
    with pytest.raises(RuntimeError, match="injected"):
        train(configs[1], on_step=boom)


def test_members_resume_from_their_snapshots(composer):
    configs = [dict(c, train={**c["train"], "checkpoint_every": 20}) for c in member_configs(composer, "adam", "hinge")[:3]]
    snapshots = [[] for _ in configs]
    full = train_pack([Member(c, on_checkpoint=snapshots[i].append) for i, c in enumerate(configs)])
    assert [len(s) for s in snapshots] == [3, 3, 1]  # the third member stops at max_steps = 20
    resumed = train_pack([Member(c, resume=snapshots[i][0]) for i, c in enumerate(configs)])
    for f, r in zip(full, resumed):
        assert (f.outcome, f.steps, f.metrics) == (r.outcome, r.steps, r.metrics)


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
    lost = [r for r in packed_runs if r.info.status == "FAILED"]
    assert len(lost) == 4 and all("worker lost" in r.data.tags["sgdlab.error"] for r in lost)
    for tid, run in finished.items():
        assert run.data.tags["sgdlab.resumed_from"].endswith("@20") and run.data.tags["sgdlab.attempt"] == "2"
        for key, value in reference[tid].data.metrics.items():
            if key != "wall_time":
                assert math.isclose(run.data.metrics[key], value, rel_tol=REL, abs_tol=1e-12), key

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


def test_ended_members_of_packs_in_flight_are_read_from_the_store(tmp_path):
    """The progress bar's source: trials whose newest train run, started since the sweep command began, has
    ended; runs of earlier commands, running runs and probe runs do not count."""
    import time

    from sgdlab.tracking.query import ended_since
    from sgdlab.tracking.store import open_sweep
    from sgdlab.tracking.writer import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "progress")
    before = TrialRun.start(handle, "old", {"seed": 0}, attempt=1, run_name="old")
    before.finish("converged")
    time.sleep(0.01)
    since = int(time.time() * 1000)
    runs = {name: TrialRun.start(handle, name, {"seed": 0}, attempt=1, run_name=name)
            for name in ("done", "broken", "busy", "retried")}
    runs["done"].finish("max_steps")
    runs["broken"].fail(RuntimeError("boom"))
    runs["retried"].fail(RuntimeError("worker lost"))
    TrialRun.start(handle, "retried", {"seed": 0}, attempt=2, run_name="retried")  # its retry is running
    TrialRun.start(handle, "probed", {"seed": 0}, attempt=1, run_name="probe", kind="probe").finish("done")
    assert ended_since(uri, "progress", since) == {"done": "FINISHED", "broken": "FAILED"}
    assert ended_since(uri, "no_such_sweep", since) == {}
    assert ended_since("http://127.0.0.1:1", "progress", since) is None


def test_packed_runs_share_their_packs_heartbeat(tmp_path):
    """A pack refreshes one member's run for all (tag sgdlab.pack): a RUNNING member whose own heartbeat is old is
    running while a run of its pack beats, and stale once none does; a run outside the pack keeps its own."""
    import time

    from sgdlab.tracking import tags
    from sgdlab.tracking.query import by_trial, sweep_runs, trial_state
    from sgdlab.tracking.store import client, open_sweep
    from sgdlab.tracking.writer import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handle = open_sweep(uri, "beats")
    runs = [TrialRun.start(handle, f"m{i}", {"seed": i}, attempt=1, run_name=f"m{i}", heartbeat_s=None,
                     extra_tags={tags.PACK: "pack-1"}) for i in range(3)]
    alone = TrialRun.start(handle, "alone", {"seed": 9}, attempt=1, run_name="alone")
    old = f"{time.time() - 600:.3f}"
    for run in [*runs, alone]:
        client(uri).set_tag(run.run_id, tags.HEARTBEAT, old)

    def states():
        trials = by_trial(sweep_runs(uri, "beats"))
        return {trial: trial_state(records, stale_after_s=60) for trial, records in trials.items()}

    assert states() == {"m0": "stale", "m1": "stale", "m2": "stale", "alone": "stale"}
    runs[1].flush()  # the pack beats on one member's run
    assert states() == {"m0": "running", "m1": "running", "m2": "running", "alone": "stale"}
    runs[1].finish("converged")  # an ended member's last heartbeat still says the pack was alive then
    assert states() == {"m0": "running", "m1": "finished", "m2": "running", "alone": "stale"}
