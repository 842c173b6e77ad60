"""The stopping rules of the training loop (training/loop.py stop_outcomes), one rule at a time, and their order."""

import numpy as np
import pytest

from sgdlab.training.loop import stop_outcomes

RULES = {"divergence_loss": 1e3, "stop_when_fitted": True, "loss_threshold": None, "max_time_s": None}


def test_diverged_on_a_non_finite_loss_or_one_above_divergence_loss():
    loss = np.array([np.nan, np.inf, -np.inf, 1e3, 1001.0, 0.5], dtype=np.float32)
    assert stop_outcomes(RULES, loss=loss) == {0: "diverged", 1: "diverged", 2: "diverged", 4: "diverged"}


def test_converged_when_fitted_and_only_where_measured():
    unfitted = np.array([0, 3, np.nan])
    assert stop_outcomes(RULES, unfitted=unfitted) == {0: "converged"}
    assert stop_outcomes({**RULES, "stop_when_fitted": False}, unfitted=unfitted) == {}


def test_converged_at_the_loss_threshold_on_the_full_training_set_only():
    rules, loss = {**RULES, "loss_threshold": 0.05, "stop_when_fitted": False}, np.array([0.05, 0.04, 0.06])
    assert stop_outcomes(rules, loss=loss, full_set=True) == {0: "converged", 1: "converged"}
    assert stop_outcomes(rules, loss=loss) == {}  # a batch loss never triggers it


def test_max_steps_per_member():
    steps, max_steps = np.array([10, 9, 12]), np.array([10, 10, 11])
    assert stop_outcomes(RULES, steps=steps, max_steps=max_steps) == {0: "max_steps", 2: "max_steps"}


def test_max_time_stops_every_member():
    rules, steps, max_steps = {**RULES, "max_time_s": 2.0}, np.array([1, 2]), np.array([10, 10])
    assert stop_outcomes(rules, steps=steps, max_steps=max_steps, elapsed=2.5) == {0: "max_steps", 1: "max_steps"}
    assert stop_outcomes(rules, steps=steps, max_steps=max_steps, elapsed=1.5) == {}
    assert stop_outcomes(RULES, steps=steps, max_steps=max_steps, elapsed=1e9) == {}  # no limit set


@pytest.mark.parametrize("loss,unfitted,steps,expected", [(np.inf, 0, 10, "diverged"), (0.0, 0, 10, "converged"),
                                                          (0.5, 1, 10, "max_steps"), (0.5, 1, 9, None)])
def test_rules_apply_in_order_diverged_converged_max_steps(loss, unfitted, steps, expected):
    out = stop_outcomes({**RULES, "loss_threshold": 0.1}, loss=np.array([loss]), full_set=True,
                        unfitted=np.array([unfitted]), steps=np.array([steps]), max_steps=np.array([10]))
    assert out.get(0) == expected


def first_fitted_step(cfg: dict) -> int:
    """The first step after which every training point is fitted, from a full-set check after every step of an
    otherwise identical run that does not stop on fitting."""
    import copy

    import torch

    from sgdlab.training.loop import Member, train_pack
    from sgdlab.training.problem import build_problem

    problem = build_problem(cfg)
    x, y, f0 = problem.data.x_train, problem.data.y_train, problem.f0_train
    fitted_at: list[int] = []

    def check(step: int, params: dict) -> None:
        with torch.no_grad():
            if not fitted_at and bool(problem.loss.fitted(problem.predict(params, (x, y, f0)), y).all()):
                fitted_at.append(step)

    every_step = copy.deepcopy(cfg)
    every_step["train"]["stop_when_fitted"] = False
    train_pack([Member(every_step, on_params=check, params_every=1)])
    return fitted_at[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_cheap_fit_check_stops_at_the_first_fitted_step(optimizer):
    """The loop checks the whole training set only after a zero batch loss and, with plain SGD, not again while
    the parameters have not moved: the stop step is still the first step at which every point is fitted."""
    from sgdlab.config.compose import Composer
    from sgdlab.training.loop import Member, train_pack

    base = ["data=teacher_perceptron", "data.n_train=32", "data.dim=8", "data.batch_size=4", "model=perceptron",
            "model.alpha=4", "loss=hinge", f"optim={optimizer}", "train.max_steps=5000", "train.log_every=5000",
            "train.dtype=float64"] + (["optim.temperature=0.2"] if optimizer == "sgd" else ["optim.lr=0.05"])
    cfgs = [Composer()([*base, f"seed={seed}"]) for seed in range(3)]
    expected = [first_fitted_step(cfg) for cfg in cfgs]
    results = train_pack([Member(cfg) for cfg in cfgs])  # three members of one pack, each with its own stop
    assert [r.outcome for r in results] == ["converged"] * 3
    assert [r.steps for r in results] == expected
    assert len(set(expected)) > 1 and min(expected) > 50


def test_a_training_time_floor_gives_a_small_lr_the_steps_it_needs():
    """train.min_t: member m may take max(max_steps, ceil(min_t / lr_m)) steps, so that a small lr reaches the
    training time t = lr_m x steps = min_t; a large lr keeps max_steps. With min_t null the config's trial id is
    the one it had before the key existed."""
    from sgdlab.config.compose import Composer
    from sgdlab.sweep.identity import identity_config
    from sgdlab.training.loop import Member, train_pack

    base = ["data=teacher_perceptron", "data.n_train=64", "data.dim=8", "data.batch_size=4", "model=perceptron",
            "loss=hinge", "optim=sgd", "train.max_steps=30", "train.log_every=1000", "train.stop_when_fitted=false"]
    cfgs = [Composer()([*base, f"optim.lr={lr}", "train.min_t=3"]) for lr in (0.5, 0.03, 0.007)]
    results = train_pack([Member(cfg) for cfg in cfgs])
    assert [(r.outcome, r.steps) for r in results] == [("max_steps", 30), ("max_steps", 100), ("max_steps", 429)]
    assert [r.metrics["train_time"] for r in results] == pytest.approx([15.0, 3.0, 3.003])
    unset = Composer()([*base, "optim.lr=0.5"])
    assert unset["train"]["min_t"] is None and "min_t" not in identity_config(unset)["train"]
    assert identity_config(cfgs[0])["train"]["min_t"] == 3
