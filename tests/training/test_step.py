"""The compiled step (training/step.py): from train.compile_after on, a trial trained alone follows the same
trajectory as uncompiled (float64); a trial resumed past that step compiles again and ends as the uninterrupted
one; where torch.compile fails, a warning says so and the trial ends as uncompiled."""

import pytest
import torch

from sgdlab.config.compose import Composer
from sgdlab.training.distributed import ALONE
from sgdlab.training.loop import train
from sgdlab.training.step import Step

TRIALS = {
    "mlp-sgd": ["model.depth=2", "model.width=16", "data.n_train=64", "data.batch_size=8", "optim=sgd",
                "optim.lr=0.5"],
    "perceptron-adam": ["model=perceptron", "data=teacher_perceptron", "data.dim=8", "data.n_train=64",
                        "data.batch_size=8", "optim=adam", "optim.lr=1e-2"],
}
BASE = ["train.dtype=float64", "train.max_steps=60", "train.log_every=10", "train.checkpoint_every=40",
        "train.stop_when_fitted=false"]


@pytest.fixture(scope="module")
def composer():
    return Composer()


@pytest.fixture
def compiles(monkeypatch) -> list:
    """The functions passed to torch.compile (which still compiles them)."""
    seen, real = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(fn) or real(fn, **kw))
    return seen


@pytest.mark.parametrize("compile_after, steps_done, max_steps, expected", [
    (None, 10**6, 10**7, False), (20, 19, 60, False), (20, 20, 60, True), (20, 40, 60, True), (20, 41, 60, False),
    (0, 0, 1, True), (50_000, 50_000, 99_999, False), (50_000, 50_000, 100_000, True),
])
def test_a_trial_compiles_past_compile_after_with_as_many_steps_left(compile_after, steps_done, max_steps,
                                                                      expected):
    step = Step(member_loss=lambda *a: None, member_update=lambda *a: None, workers=ALONE, compile_after=compile_after)
    assert step.compiles(steps_done, max_steps) is expected


def assert_same(a, b):
    assert (a.outcome, a.steps) == (b.outcome, b.steps)
    assert a.metrics == pytest.approx(b.metrics, rel=1e-12, abs=1e-14)
    for key in a.params:
        torch.testing.assert_close(a.params[key], b.params[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(TRIALS))
def test_the_compiled_step_follows_the_uncompiled_trajectory_and_resumes(composer, compiles, name):
    uncompiled = train(composer(TRIALS[name] + BASE + ["train.compile_after=null"]))
    assert compiles == []
    snapshots = []
    compiled = train(composer(TRIALS[name] + BASE + ["train.compile_after=20"]), on_checkpoint=snapshots.append)
    assert len(compiles) == 1  # at step 20, with 40 steps left
    assert_same(compiled, uncompiled)
    resumed = train(composer(TRIALS[name] + BASE + ["train.compile_after=20"]), resume=snapshots[0])
    assert len(compiles) == 2  # at once: step 40 with 20 left
    assert_same(resumed, compiled)


def test_a_failed_compilation_warns_and_the_trial_goes_on_uncompiled(composer, monkeypatch):
    def no_toolchain(fn, **kw):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
        return call

    monkeypatch.setattr(torch, "compile", no_toolchain)
    cfg = TRIALS["mlp-sgd"] + BASE
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working C"
                                         r"\+\+ compiler found\); the trial goes on uncompiled"):
        fallen_back = train(composer(cfg + ["train.compile_after=20"]))
    assert_same(fallen_back, train(composer(cfg + ["train.compile_after=null"])))
