"""Packed training (training/loop.py train_pack): members of a pack end with the numbers they have when trained
alone (float64, 1e-6 relative), stop on their own, fail on their own, resume from their own snapshots."""

import pytest
import torch

from sgdlab.config.compose import Composer
from sgdlab.training.loop import Member, train, train_pack

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
