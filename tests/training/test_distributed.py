"""Multi-worker trials (resources.workers_per_trial): 2 gloo workers on the CPU through Ray Train's TorchTrainer,
checked against one process in float64: the training trajectory, the distributed Hessian probe, and a sweep
through the real command on a 2-CPU local Ray."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sgdlab.config.compose import Composer
from sgdlab.config.schema import ConfigError

from conftest import free_port, mlflow_runs, run_sgdlab

pytestmark = pytest.mark.slow

SMALL_VGG = ["data=cifar10_animals", "data.n_train=48", "data.n_test=16", "data.batch_size=8", "model=vgg",
             "model.stages=[4,8]", "model.convs_per_stage=1", "optim.lr=0.5", "train.max_steps=30",
             "train.log_every=10", "train.dtype=float64"]
PROBE = {"matrix": "full", "n_examples": 32, "chunk_size": 16, "dtype": "float64", "tol": 1e-6, "seed": 3}
TRACE_SAMPLES = 6


def write_cifar(root, n_per_batch: int = 16, seed: int = 0):
    """A tiny folder in the CIFAR-10 python format: data_batch_1..5 and test_batch, uint8 rows of 3072."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        (root / name).write_bytes(pickle.dumps(batch, protocol=4))
    return root


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def test_workers_per_trial_is_checked():
    compose = Composer()
    assert compose(["optim.lr=0.1", "resources.workers_per_trial=2"])["resources"]["workers_per_trial"] == 2
    assert compose(["optim.lr=0.1"])["resources"]["workers_per_trial"] == 1
    for value, message in (("0", "must be an integer >= 1"), ("1.5", "expected an integer"),
                           ("3", "must be divisible by W = 3")):
        with pytest.raises(ConfigError, match=rf"^resources.workers_per_trial: .*{message}"):
            compose(["optim.lr=0.1", "data.batch_size=16", f"resources.workers_per_trial={value}"])


def test_shards_split_the_global_batch():
    from sgdlab.training.distributed import Workers, check_batch

    idx = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:12].reshape(1, 12)
    assert torch.equal(torch.cat([Workers(r, 3).shard(idx) for r in range(3)], dim=1), idx)
    with pytest.raises(ValueError, match="not divisible"):
        check_batch(10, 4)


@pytest.fixture
def one_thread():
    """The one-process reference computes with one thread, like each worker (resources.cpus=1): on a busy
    2-core machine two threads per process are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STOPPING = {"fitted": ["optim.lr=2.0"],  # converged (hinge: a zero batch loss, then fitted)
            "loss_threshold": ["optim.lr=2.0", "train.stop_when_fitted=false", "train.loss_threshold=0.05"],
            "diverged": ["optim.lr=1e6"],
            "max_steps": ["optim.lr=0.01", "train.max_steps=40"]}


def stopping_config(overrides: list[str]) -> dict:
    return Composer()(["model.depth=1", "model.width=16", "data.n_train=32", "data.batch_size=8",
                       "train.max_steps=3000", "train.log_every=7", "train.dtype=float64", *overrides])


def _train_as_rank(rank: int, init_method: str, out: str) -> None:
    """One of 2 gloo ranks: every STOPPING case as a pack of 2 members (seeds 0 and 1) on the same loop."""
    import torch.distributed as dist

    from sgdlab.training.distributed import world
    from sgdlab.training.loop import Member, train_pack

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        results = {}
        for case, overrides in STOPPING.items():
            cfg = stopping_config(overrides)
            pack = train_pack([Member(cfg), Member({**cfg, "seed": 1})], workers=world())
            results[case] = [(r.outcome, r.steps, r.metrics, r.params) for r in pack]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_stop_like_one_process(tmp_path, one_thread):
    """2 data-parallel gloo ranks (each half of every batch and of every evaluation, gradients and sums
    all-reduced) and one process take the same decisions on the same loop, for each stopping rule, in a pack of
    two members: the same outcome and step, metrics and parameters to 1e-10 relative (float64)."""
    import torch.multiprocessing as mp

    from sgdlab.training.loop import Member, train_pack

    out = tmp_path / "ranks.pt"
    try:
        mp.spawn(_train_as_rank, args=(f"tcp://127.0.0.1:{free_port()}", str(out)), nprocs=2)
    except mp.ProcessExitedException as exc:
        # About 1 run in 10 on this machine a rank aborts inside torch's gloo threads ("terminate called without
        # an active exception", no Python frame; seen at the code of 2026-12-07 too): a second try, not a third.
        if exc.signal_name != "SIGABRT":
            raise
        mp.spawn(_train_as_rank, args=(f"tcp://127.0.0.1:{free_port()}", str(out)), nprocs=2)
    ranks = torch.load(out, weights_only=True)
    for case, overrides in STOPPING.items():
        cfg = stopping_config(overrides)
        alone = train_pack([Member(cfg), Member({**cfg, "seed": 1})])
        for (outcome, steps, metrics, params), theirs in zip(ranks[case], alone):
            assert (outcome, steps) == (theirs.outcome, theirs.steps), case
            assert outcome == ("converged" if case in ("fitted", "loss_threshold") else case)
            assert metrics == pytest.approx(theirs.metrics, rel=1e-10, abs=1e-12), case
            assert max(rel(params[k], theirs.params[k]) for k in params) < 1e-10, case


def test_sweep_with_two_workers_per_trial_matches_one_process(sweeps_dir, tmp_path, one_thread, shared_ray):
    """One trial on 2 gloo workers (Ray Train TorchTrainer) through the real command on a 2-CPU local Ray (the
    launching task holds no CPU, the 2 workers take both), with the distributed sharpness and Hutchinson trace
    logged along training; everything recorded equals one process (training/loop.py, probes/ on the full data):
    (a) the final parameters (checkpoint/final.pt) and logged metrics, (b) the probe's lambda_max and trace,
    (c) the records of a FINISHED run."""
    data = write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    probe = [f"probe.{k}={v}" for k, v in PROBE.items()] + ["probe.every=15", "probe.trace_every=true",
                                                             f"probe.trace_samples={TRACE_SAMPLES}"]
    overrides = ", ".join(f"'{o}'" for o in [*SMALL_VGG, *probe, "resources.workers_per_trial=2"])
    (sweeps_dir / "dist.yaml").write_text(f"description: one VGG trial on 2 workers\noverrides: [{overrides}]\n"
                                          "axes:\n  seed: [0]\n")
    work = tmp_path / "work"
    work.mkdir()
    out = run_sgdlab("sweep", "dist", "cluster.num_cpus=2", cwd=work, timeout=300,
                     env={"SGDLAB_DATA_DIR": str(data.parent)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 finished" in out.stderr

    # (c) the records of a one-process trial, plus the number of workers
    client, (run,) = mlflow_runs(work / "mlflow.db", "dist")
    assert run.info.status == "FINISHED" and run.data.tags["sgdlab.outcome"] == "max_steps"
    assert run.data.tags["sgdlab.workers"] == "2" and run.data.params["resources.workers_per_trial"] == "2"
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"config.yaml", "checkpoint"}
    assert [f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/final.pt"]
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    assert [step for step, _ in history("train_loss")] == [0, 10, 20, 30]

    # (a) one process with the same global batch, in this process
    from sgdlab.jobs.probe import operator
    from sgdlab.probes.lanczos import top_eigenpairs
    from sgdlab.probes.trace import hutchinson
    from sgdlab.training import checkpoint
    from sgdlab.training.loop import train
    from sgdlab.training.problem import build_problem

    cfg = Composer()([*SMALL_VGG, f"data.root={data}"])
    seen = {}
    reference = train(cfg, on_params=lambda step, params: seen.update({step: params}), params_every=15)
    final = checkpoint.from_bytes(open(client.download_artifacts(run.info.run_id, "checkpoint/final.pt",
                                                                 str(tmp_path)), "rb").read())["state"]
    assert final["steps"] == reference.steps == 30
    worst = max(rel(final["params"][k], reference.params[k]) for k in reference.params)
    assert worst < 1e-10, worst
    for key in ("train_loss", "test_loss", "train_error", "test_error", "min_margin", "weight_change",
                "train_time", "steps"):
        assert run.data.metrics[key] == pytest.approx(reference.metrics[key], rel=1e-10, abs=1e-12), key

    # (b) the sharded Hessian (each worker half of the probe data, products all-reduced), same seeds
    problem, worst_probe = build_problem(cfg), 0.0
    sharpness, trace = dict(history("sharpness")), dict(history("hessian_trace"))
    assert sorted(sharpness) == sorted(trace) == sorted(seen) == [0, 15, 30]
    for step, params in seen.items():
        op = operator(problem, params, {**cfg["probe"], **PROBE})
        top = top_eigenpairs(op, k=1, tol=PROBE["tol"], seed=PROBE["seed"]).eigenvalues[0]
        tr = hutchinson(op, TRACE_SAMPLES, seed=PROBE["seed"]).mean
        assert sharpness[step] == pytest.approx(float(top), rel=1e-8), step
        assert trace[step] == pytest.approx(tr, rel=1e-8), step
        worst_probe = max(worst_probe, rel(sharpness[step], top), rel(trace[step], tr))
    print(f"\nparams rel {worst:.1e}, probe rel {worst_probe:.1e}")


def test_distributed_operator_without_process_group_is_the_operator(one_thread):
    """With one rank the sharded operator is the ordinary one (the all_reduce is skipped)."""
    from sgdlab.jobs.probe import distributed_operator, operator
    from sgdlab.training.problem import build_problem

    cfg = Composer()(["model.depth=1", "model.width=8", "data.n_train=40", "optim.lr=0.1", "train.dtype=float64"])
    problem = build_problem(cfg)
    pcfg = {**cfg["probe"], "n_examples": 40, "chunk_size": 16}
    v = torch.randn(problem.module.hidden[0].numel() + 8, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    sharded, single = distributed_operator(problem, problem.params0, pcfg), operator(problem, problem.params0, pcfg)
    assert sharded.n_examples == sharded.n_local == 40
    assert rel(sharded.matvec(v), single.matvec(v)) < 1e-12
