"""Refinement (sweep/refine.py, sweep/criterion.py) as pure functions of the trials' values: bisection converges
to a known crossing in the expected number of rounds, a replay from the values reruns nothing, and the criterion's
grammar and seed rules; the real training runs are in tests/reliability/test_refinement.py."""

import math

import pytest

from sgdlab.config.compose import Composer
from sgdlab.config.schema import ConfigError
from sgdlab.sweep import criterion
from sgdlab.sweep.expand import expand
from sgdlab.sweep.refine import Refinement, check_axis, parse_refine

BASE = ["model.depth=1", "model.width=8", "data.n_train=64", "data.batch_size=8", "train.max_steps=10"]


@pytest.fixture(scope="module")
def composer():
    return Composer()


def refinement(composer, axes: list[str], **refine) -> Refinement:
    spec = parse_refine({"axis": "optim.lr", "criterion": "outcome == diverged", **refine}, "test")
    overrides = BASE + axes
    check_axis(spec, overrides)
    return Refinement(spec, expand(overrides, composer), overrides, composer)


def run_to_the_end(r: Refinement, outcome_of, values: dict | None = None) -> tuple[dict, int]:
    """Run every round with outcome_of(trial) as the result; (values, trials run)."""
    values, ran = dict(values or {}), 0
    while True:
        todo = r.advance(values)
        if not todo:
            return values, ran
        for trial in todo:
            values[trial.trial_id] = {"outcome": outcome_of(trial), "train_loss": 0.0}
        ran += len(todo)


def lr(trial) -> float:
    return trial.config["optim"]["lr"]


@pytest.mark.parametrize("crossing", [0.37, 1.0, 2.9])
def test_bisection_locates_a_known_crossing_in_the_expected_rounds(composer, crossing):
    """Factor-4 grid, tolerance 0.1: the bracket halves in log until upper / lower <= 1.1: 4 rounds."""
    r = refinement(composer, ["optim.lr=0.0625,0.25,1,4,16", "seed=0,1"], tolerance=0.1)
    values, ran = run_to_the_end(r, lambda t: "diverged" if lr(t) >= crossing else "max_steps")
    (b,) = r.brackets(values)
    assert b.status == "located" and b.rounds == 4 and b.added == 8 and b.trials == 18 and ran == 18
    assert b.lower < crossing <= b.upper and b.upper / b.lower <= 1.1 * (1 + 1e-8)
    assert b.estimate == pytest.approx(math.sqrt(b.lower * b.upper))


def test_a_replay_from_the_values_runs_nothing_again(composer):
    """A driver stopped after its third round; a new one (the sweep rerun) replays those rounds from the values,
    proposes only the next midpoint and ends as one uninterrupted refinement does, with the same trials."""
    axes = ["optim.lr=0.25,16", "seed=0"]
    outcome = lambda t: "diverged" if lr(t) >= 1.3 else "max_steps"  # noqa: E731
    stopped, values = refinement(composer, axes, tolerance=0.1), {}
    for _ in range(3):  # round 0 (the grid), then two midpoints
        for trial in stopped.advance(values):
            values[trial.trial_id] = {"outcome": outcome(trial)}
    assert len(values) == 4
    resumed = refinement(composer, axes, tolerance=0.1)
    todo = resumed.advance(values)
    assert len(todo) == 1 and todo[0].trial_id not in values
    assert next(iter(resumed.combinations.values())).rounds == 3  # two replayed, the third proposed
    values, ran = run_to_the_end(resumed, outcome, values)
    whole, ran_whole = run_to_the_end(refinement(composer, axes, tolerance=0.1), outcome)
    assert set(values) == set(whole) and 4 + ran == ran_whole
    assert resumed.brackets(values) == refinement_brackets(composer, axes, whole)


def refinement_brackets(composer, axes, values):
    r = refinement(composer, axes, tolerance=0.1)
    r.advance(values)
    return r.brackets(values)


def test_out_of_range_budget_and_per_combination_brackets(composer):
    r = refinement(composer, ["optim.lr=0.25,1,4", "data.batch_size=4,8", "seed=0"], tolerance=0.01, max_rounds=2)
    crossing = {4: 0.1, 8: 2.0}  # B = 4 diverges everywhere: below the range
    values, _ = run_to_the_end(r, lambda t: "diverged" if lr(t) >= crossing[t.config["data"]["batch_size"]]
                               else "max_steps")
    status = {b.combination["data.batch_size"]: (b.status, b.rounds) for b in r.brackets(values)}
    assert status == {"4": ("below range", 0), "8": ("budget", 2)}
    never = refinement(composer, ["optim.lr=0.25,1", "seed=0"])
    values, _ = run_to_the_end(never, lambda t: "max_steps")
    assert [b.status for b in never.brackets(values)] == ["above range"]


def test_an_integer_axis_gets_integer_midpoints(composer):
    spec = parse_refine({"axis": "data.batch_size", "criterion": "train_loss > 0.5", "tolerance": 0.01}, "test")
    overrides = [*BASE[:3], "optim.lr=0.1", "data.batch_size=2,32", "seed=0"]
    r = Refinement(spec, expand(overrides, composer), overrides, composer)
    values, _ = run_to_the_end_with(r, lambda t: 1.0 if t.config["data"]["batch_size"] >= 11 else 0.0)
    (b,) = r.brackets(values)
    assert (b.lower, b.upper, b.status) == (10, 11, "located")


def run_to_the_end_with(r: Refinement, loss_of) -> tuple[dict, int]:
    values, ran = {}, 0
    while todo := r.advance(values):
        for trial in todo:
            values[trial.trial_id] = {"outcome": "max_steps", "train_loss": loss_of(trial)}
        ran += len(todo)
    return values, ran


@pytest.mark.parametrize("text, seeds, points, expected", [
    ("outcome == diverged", "any", [{"outcome": "diverged"}, {"outcome": "max_steps"}], True),
    ("outcome == diverged", "all", [{"outcome": "diverged"}, {"outcome": "max_steps"}], False),
    ("outcome == diverged", "mean", [{"outcome": "diverged"}, {"outcome": "diverged"}, {"outcome": "x"}], True),
    ("test_error > 0.1", "mean", [{"outcome": "", "test_error": 0.05}, {"outcome": "", "test_error": 0.2}], True),
    ("test_error > 0.1", "all", [{"outcome": "", "test_error": 0.05}, {"outcome": "", "test_error": 0.2}], False),
    ("final train_loss > initial train_loss", "any",
     [{"outcome": "", "train_loss": 2.0, "initial:train_loss": 1.0}], True),
    ("final train_loss > initial train_loss", "any",  # a diverged run's final loss counts as +inf
     [{"outcome": "diverged", "train_loss": float("nan"), "initial:train_loss": 1.0}], True),
    ("final train_loss > initial train_loss", "mean",
     [{"outcome": "diverged", "train_loss": 0.5, "initial:train_loss": 1.0},
      {"outcome": "max_steps", "train_loss": 0.5, "initial:train_loss": 1.0}], True),
    ("final train_loss > initial train_loss", "any",
     [{"outcome": "max_steps", "train_loss": 0.9, "initial:train_loss": 1.0}], False),
    # the spike criterion: the largest logged loss against k times the first
    ("max train_loss > 1.5 x initial train_loss", "any",
     [{"outcome": "max_steps", "train_loss": 0.5, "max:train_loss": 1.6, "initial:train_loss": 1.0}], True),
    ("max train_loss > 1.5 x initial train_loss", "any",
     [{"outcome": "max_steps", "train_loss": 0.5, "max:train_loss": 1.4, "initial:train_loss": 1.0}], False),
    ("max train_loss > 1.5 x initial train_loss", "any",  # a diverged run's largest loss counts as +inf
     [{"outcome": "diverged", "train_loss": 0.5, "max:train_loss": 1.0, "initial:train_loss": 1.0}], True),
    ("2 x test_error > train_error", "all", [{"outcome": "", "test_error": 0.2, "train_error": 0.3}], True),
    ("weight_change > 2 x plateau", "any", [{"outcome": "", "weight_change": 0.3}], True),  # plateau 0.1
    ("weight_change > 2 x plateau", "any", [{"outcome": "", "weight_change": 0.15}], False),
])
def test_criteria_and_seed_rules(text, seeds, points, expected):
    assert criterion.parse(text, seeds).holds(points, plateau=0.1) is expected


@pytest.mark.parametrize("body, message", [
    ({"axis": "optim.lr", "criterion": "test_eror > 0.1"}, "refine.criterion: unknown metric 'test_eror'"),
    ({"axis": "optim.lr", "criterion": "outcome > diverged"}, "compare the outcome as `outcome == NAME`"),
    ({"axis": "optim.lr", "criterion": "test_error"}, "is not LEFT OP RIGHT"),
    ({"axis": "optim.lr", "criterion": "max train_loss > 1e999 x initial train_loss"}, "'1e999' is not a finite"),
    ({"axis": "optim.lr", "criterion": "max train_loss > 1.5 x first train_loss"}, "cannot read '1.5 x first "
                                                                                    "train_loss'"),
    ({"axis": "optim.lr", "criterion": "0.1 < test_error"}, "the left side must be a metric"),
    ({"axis": "optim.lr", "criterion": "outcome == diverged", "tolerance": 0}, "refine.tolerance: must be > 0"),
    ({"axis": "optim.lr", "criterion": "outcome == diverged", "tolerance": -1}, "refine.tolerance: must be > 0"),
    ({"axis": "optim.lr", "criterion": "outcome == diverged", "scale": "cubic"}, "refine.scale: must be log or"),
    ({"axis": "optim.lr", "criterion": "outcome == diverged", "seeds": "some"}, "refine.seeds: must be one of"),
    ({"axis": "optim.lr", "criterion": "outcome == diverged", "tolerence": 0.1}, "refine.tolerence: unknown"),
    ({"criterion": "outcome == diverged"}, "refine.axis: missing"),
])
def test_bad_refine_blocks(body, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        parse_refine(body, "test")


@pytest.mark.parametrize("axes, message", [
    (["model.alpha=1,2"], "refine.axis: 'optim.lr' is not an axis of the sweep; axes: model.alpha"),
    (["optim.lr=0.1"], "refine.axis: optim.lr needs at least 2 distinct values to bracket a crossing, got 0.1"),
    (["optim.lr=0.1,0.1"], "needs at least 2 distinct values"),
])
def test_the_refine_axis_must_be_an_axis_with_a_bracket(axes, message):
    spec = parse_refine({"axis": "optim.lr", "criterion": "outcome == diverged"}, "test")
    with pytest.raises(ConfigError, match=message):
        check_axis(spec, BASE + axes)


def test_history_values_are_the_first_or_the_largest_logged():
    from sgdlab.orchestration.refinement import history_value

    assert history_value("initial", [1.0, 3.0, 2.0]) == 1.0
    assert history_value("max", [1.0, 3.0, 2.0]) == 3.0
    assert history_value("max", [1.0, float("nan"), 2.0]) == math.inf  # a blow-up logged on the way
    assert math.isnan(history_value("max", []))
