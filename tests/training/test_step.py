"""Compiled spans of steps (training/step.py, training/loop.py run_span): from train.compile_after on (from
the start where its span is compiled already), a trial trained alone runs the steps up to its next event in one
compiled call, and in float64 follows the step-by-step trial (outcome, stop step, every logged metric, final
parameters, a resume from every checkpoint) for SGD and Adam, hinge, MSE and cross-entropy, a divergence and a
fit in the middle of a span; where torch.compile fails, a warning says so and the trial ends as uncompiled."""

import math
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from sgdlab.config.compose import Composer
from sgdlab.training.distributed import ALONE
from sgdlab.training.loop import Member, StepClock, train, train_pack
from sgdlab.training import step as step_module
from sgdlab.training.step import Step

SMALL = ["data.n_train=64", "data.batch_size=8"]
TRIALS = {
    "mlp-sgd-hinge": ["model.depth=2", "model.width=16", *SMALL, "optim=sgd", "optim.lr=0.5"],
    "perceptron-adam-mse": ["model=perceptron", "data=teacher_perceptron", "data.dim=8", *SMALL, "loss=mse",
                            "optim=adam", "optim.lr=1e-2"],
    "mlp-sgd-cross-entropy": ["data=digits", "model.depth=1", "model.width=16", *SMALL, "model.alpha=4",
                              "loss=cross_entropy", "optim=sgd", "optim.lr=0.5"],
    # lr far beyond 2 / sharpness: the loss passes train.divergence_loss at step 5 or 6, inside the first block
    "diverging": ["model=perceptron", "data=teacher_perceptron", "data.dim=8", *SMALL, "loss=mse", "optim=sgd",
                  "optim.lr=40", "train.divergence_loss=1e6"],
    # the hinge perceptron on separable data (chi = 1) fits its 64 points at step 26, between block ends
    "fitting": ["model=perceptron", "data=teacher_perceptron", "data.dim=8", "data.chi=1", *SMALL, "model.alpha=4",
                "optim=sgd", "optim.lr=8", "train.stop_when_fitted=true"],
}
BASE = ["train.dtype=float64", "train.max_steps=60", "train.log_every=8", "train.checkpoint_every=16"]


@pytest.fixture(scope="module")
def composer():
    return Composer()


@pytest.fixture
def compiles(monkeypatch) -> list:
    """The functions passed to torch.compile (which still compiles them), from an empty cache of compiled
    spans."""
    seen, real = [], torch.compile
    torch.compiler.reset()  # dynamo's own cache too: its recompile limit counts the earlier tests' spans
    monkeypatch.setattr(step_module, "COMPILED", step_module.Compiled())
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(fn) or real(fn, **kw))
    return seen


@pytest.mark.parametrize("compile_after, steps_done, steps_left, seconds_per_step, expected", [
    (None, 10**6, 10**7, 1.0, False), (0, 0, 1, 0.0, True),
    # the last compilation took 10 s: spans where the steps left would take more than REPAY = 3 times that
    (1000, 999, 10**6, 1e-3, False), (1000, 1000, 10**6, 1e-3, True), (1000, 1000, 29_999, 1e-3, False),
    (1000, 1000, 30_001, 1e-3, True), (1000, 5000, 10**6, 0.0, False),
])
def test_spans_run_where_the_steps_left_repay_the_compilation(monkeypatch, compile_after, steps_done, steps_left,
                                                              seconds_per_step, expected):
    monkeypatch.setattr(step_module, "COMPILED", step_module.Compiled(seconds=10.0))
    step = Step(member_loss=lambda *a: None, member_update=lambda *a: None, workers=ALONE, x=torch.zeros(64, 4),
                y=torch.zeros(64), batch_size=8, compile_after=compile_after, divergence_loss=math.inf,
                periods=[8])
    assert step.compiles(1, steps_done, steps_left, seconds_per_step) is expected
    step_module.COMPILED.get(step._key(1), lambda: (None, None))  # a process that compiled this span already
    assert step.compiles(1, steps_done, steps_left, seconds_per_step) is (compile_after is not None)


def test_the_step_clock_times_steps_per_pack_size_after_a_warm_up():
    clock = StepClock()
    for _ in range(StepClock.WARM_UP):
        clock.add(3, 100.0)  # first calls: not counted
    for _ in range(StepClock.TIMED - 1):
        clock.add(3, 0.5)
    assert clock.seconds_per_step(3) == 0.0 and clock.seconds_per_step(2) == 0.0
    clock.add(3, 2.0)
    assert clock.seconds_per_step(3) == pytest.approx((0.5 * (StepClock.TIMED - 1) + 2.0) / StepClock.TIMED)


def logged(**callbacks):
    """A trial's callbacks that keep what it logs and the snapshots it hands out."""
    history, snapshots = [], []
    return history, snapshots, {"on_log": lambda step, m: history.append((step, m)),
                                "on_checkpoint": snapshots.append, **callbacks}


def assert_same(a, b, history_a=None, history_b=None):
    assert (a.outcome, a.steps) == (b.outcome, b.steps)
    assert a.metrics == pytest.approx(b.metrics, rel=1e-12, abs=1e-14, nan_ok=True)
    for key in a.params:
        torch.testing.assert_close(a.params[key], b.params[key], rtol=1e-12, atol=1e-14)
    if history_a is not None:
        assert [s for s, _ in history_a] == [s for s, _ in history_b]
        for (_, ma), (_, mb) in zip(history_a, history_b):
            assert ma == pytest.approx(mb, rel=1e-12, abs=1e-14, nan_ok=True)


@pytest.mark.parametrize("name", TRIALS)
def test_blocks_follow_the_step_by_step_trial_and_resume_from_every_checkpoint(composer, compiles, name):
    """Spans of 8 steps (log every 8, checkpoints every 16; the last span 4 steps) from step 0, against
    train.compile_after=null; the resumed trials reuse the first one's compiled span."""
    fit = [] if name == "fitting" else ["train.stop_when_fitted=false"]
    history, snapshots, callbacks = logged()
    plain = train(composer(TRIALS[name] + BASE + fit + ["train.compile_after=null"]), **callbacks)
    assert compiles == []
    blocked_history, blocked_snapshots, callbacks = logged()
    blocked = train(composer(TRIALS[name] + BASE + fit + ["train.compile_after=0"]), **callbacks)
    assert len(compiles) == 1
    assert plain.blocked_steps == 0 < blocked.blocked_steps <= blocked.steps
    assert_same(blocked, plain, blocked_history, history)
    assert [s["steps"] for s in blocked_snapshots] == [s["steps"] for s in snapshots]
    if name == "diverging":
        assert blocked.outcome == "diverged" and 0 < blocked.steps < 8
    if name == "fitting":
        assert (blocked.outcome, blocked.steps) == ("converged", 26)
    for snapshot in snapshots:
        resumed = train(composer(TRIALS[name] + BASE + fit + ["train.compile_after=0"]), resume=snapshot)
        assert_same(resumed, plain)
    assert len(compiles) == 1


def test_one_compilation_serves_trials_of_other_data_size_seed_alpha_and_lr(composer, compiles):
    """The compiled span takes batches, not the data set: trials that differ in P, data, seed, alpha and lr
    share it, each follows its own step-by-step trial, and a trial whose span is compiled already runs in spans
    from its first step, whatever train.compile_after (not null) says."""
    base = ["model=perceptron", "data=teacher_perceptron", "data.dim=8", "data.batch_size=8", "optim=sgd",
            "train.stop_when_fitted=false", *BASE]
    for changed, compile_after in ((["data.n_train=64", "optim.lr=8", "model.alpha=4"], 0),
                                   (["data.n_train=128", "data.seed=1", "seed=3", "optim.lr=2", "model.alpha=16"],
                                    10**6)):
        cfg = composer(base + changed + [f"train.compile_after={compile_after}"])
        if compile_after == 0:
            blocked = train(cfg)
        else:  # no recompilation either (a guard that fails, e.g. on strides, would fall back with a warning)
            with torch.compiler.set_stance("fail_on_recompile"), warnings.catch_warnings():
                warnings.simplefilter("error")
                blocked = train(cfg)
        assert_same(blocked, train(composer(base + changed + ["train.compile_after=null"])))
        assert blocked.blocked_steps == 60  # 7 spans of 8 steps and one of 4
    assert len(compiles) == 1


def test_a_failed_compilation_warns_and_the_trial_goes_on_uncompiled(composer, monkeypatch):
    def no_toolchain(fn, **kw):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
        return call

    monkeypatch.setattr(torch, "compile", no_toolchain)
    monkeypatch.setattr(step_module, "COMPILED", step_module.Compiled())
    cfg = TRIALS["mlp-sgd-hinge"] + BASE + ["train.stop_when_fitted=false"]
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working C"
                                         r"\+\+ compiler found\); the trial goes on uncompiled"):
        fallen_back = train(composer(cfg + ["train.compile_after=0"]))
    assert_same(fallen_back, train(composer(cfg + ["train.compile_after=null"])))


PACKS = {  # members; their outcomes and stop steps (spans of 8 steps); the pack sizes it passes through
    # lr 40 and 38 pass train.divergence_loss in the first span, at the same step; lr 1 runs its 60 steps
    "diverging": (TRIALS["diverging"], ["optim.lr=40", "optim.lr=38", "optim.lr=1"],
                  [("diverged", 4), ("diverged", 4), ("max_steps", 60)], 2),
    # four seeds of the fitting perceptron fit at their own steps, two in the same span
    "fitting": (TRIALS["fitting"], ["seed=0", "seed=1", "seed=2", "seed=3"],
                [("converged", 26), ("converged", 14), ("converged", 14), ("converged", 18)], 3),
    # two members run their 60 steps: 7 spans of 8 steps, then one of 4 (its batches padded to 8)
    "steady": (TRIALS["diverging"], ["optim.lr=1", "optim.lr=0.5"], [("max_steps", 60)] * 2, 1),
}


@pytest.mark.parametrize("name", PACKS)
def test_packs_run_in_spans_and_follow_the_step_by_step_pack(composer, compiles, name):
    """A pack in compiled spans (members stopping in the same span, the pack compiled again as it shrinks, once
    per size) against the same pack step by step, member by member."""
    base, members, ends, sizes = PACKS[name]
    fit = [] if name == "fitting" else ["train.stop_when_fitted=false"]
    results, graphs = {}, counters["stats"]["unique_graphs"]
    for compile_after in ("0", "null"):
        cfgs = [composer(base + BASE + fit + [member, f"train.compile_after={compile_after}"]) for member in members]
        results[compile_after] = train_pack([Member(cfg) for cfg in cfgs])
    for spans, plain in zip(results["0"], results["null"]):
        assert_same(spans, plain)
        assert spans.blocked_steps > 0 == plain.blocked_steps
    assert [(r.outcome, r.steps) for r in results["0"]] == ends
    assert len(compiles) == sizes == counters["stats"]["unique_graphs"] - graphs  # no recompilation at a size
