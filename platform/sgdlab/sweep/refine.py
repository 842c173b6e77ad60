"""Adaptive refinement of one sweep axis: for every combination of the other axes (seeds aside), locate the point x*
along `axis` at which a criterion (sweep/criterion.py) turns from false to true.

    refine:
      axis: optim.lr                # one of the sweep's axes; its values are round 0's points
      criterion: outcome == diverged
      scale: log                    # log | linear: where the midpoint is (geometric or arithmetic mean)
      tolerance: 0.0905             # located when upper / lower - 1 <= tolerance (log; 2^(1/8) - 1 here), or
                                    # (upper - lower) / max(|lower|, |upper|) <= tolerance (linear)
      seeds: any                    # the criterion on any seed, all seeds, or the seed mean
      max_trials: null              # at most this many new trials per combination (seeds included)
      max_rounds: 12                # at most this many bisection rounds per combination
      plateau_points: 2             # `k x plateau`: the mean over this many lowest points of the axis

Bracket: with the points tried so far sorted, upper = the lowest point where the criterion holds and lower = the
highest point below it where it does not (the first crossing from below). Each round adds the midpoint of every
combination's bracket that is wider than the tolerance, for every seed; the midpoint is a function of the
bracket only, so a rerun of the sweep replays the rounds from the records (`Refinement.advance`) and runs only
the trials that have no finished run. A combination whose lowest point already satisfies the criterion is
`below range`, one where no point does `above range`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from sgdlab.config.compose import Composer
from sgdlab.config.schema import ConfigError
from sgdlab.sweep import criterion as criteria
from sgdlab.sweep.expand import Trial, expand_all, parse_axes
from sgdlab.params import flatten, param_text

SCALES = ("log", "linear")
SEED_AXIS = "seed"


@dataclass(frozen=True)
class Refine:
    axis: str
    criterion: str
    scale: str = "log"
    tolerance: float = 2 ** (1 / 8) - 1
    seeds: str = "any"
    max_trials: int | None = None
    max_rounds: int = 12
    plateau_points: int = 2

    @property
    def predicate(self) -> criteria.Criterion:
        return criteria.parse(self.criterion, self.seeds)

    def located(self, lower: float, upper: float) -> bool:
        """Whether the bracket is as narrow as the tolerance (up to the rounding of its midpoints)."""
        width = upper / lower - 1 if self.scale == "log" else (upper - lower) / max(abs(lower), abs(upper))
        return width <= self.tolerance * (1 + 1e-8)

    def midpoint(self, lower: float, upper: float) -> float:
        """The next point of a bracket, rounded to 10 significant digits (it names a trial in an override)."""
        middle = math.sqrt(lower * upper) if self.scale == "log" else (lower + upper) / 2
        return float(f"{middle:.10g}")

    def estimate(self, lower: float | None, upper: float | None) -> float:
        if lower is None or upper is None:
            return math.nan
        return math.sqrt(lower * upper) if self.scale == "log" else (lower + upper) / 2


def parse_refine(body: object, where: str) -> Refine:
    """A refine block (a mapping); ConfigError (one line) for unknown keys or impossible values."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a mapping with at least 'axis' and 'criterion'")
    known = set(Refine.__dataclass_fields__)
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"refine.{unknown[0]}: unknown refine key; allowed: {', '.join(sorted(known))}")
    for key in ("axis", "criterion"):
        if not body.get(key):
            raise ConfigError(f"refine.{key}: missing")
    try:
        refine = Refine(axis=str(body["axis"]), criterion=str(body["criterion"]),
                        scale=str(body.get("scale", "log")),
                        tolerance=float(body.get("tolerance", Refine.tolerance)), seeds=str(body.get("seeds", "any")),
                        max_trials=None if body.get("max_trials") is None else int(body["max_trials"]),
                        max_rounds=int(body.get("max_rounds", Refine.max_rounds)),
                        plateau_points=int(body.get("plateau_points", Refine.plateau_points)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if refine.scale not in SCALES:
        raise ConfigError(f"refine.scale: must be log or linear, got {refine.scale!r}")
    if not (math.isfinite(refine.tolerance) and refine.tolerance > 0):
        raise ConfigError(f"refine.tolerance: must be > 0, got {refine.tolerance:g}")
    for key in ("max_rounds", "plateau_points", "max_trials"):
        value = getattr(refine, key)
        if value is not None and value < 1:
            raise ConfigError(f"refine.{key}: must be >= 1, got {value}")
    refine.predicate  # noqa: B018 (parsed here so that a bad criterion is an error before anything runs)
    return refine


def check_axis(refine: Refine, overrides: Sequence[str]) -> list[float]:
    """The refine axis's initial points (sorted), checked against the sweep's axes."""
    axes = parse_axes(overrides)
    swept = [k for k, v in axes.items() if len(v) > 1]
    if refine.axis not in axes:
        raise ConfigError(f"refine.axis: {refine.axis!r} is not an axis of the sweep; axes: "
                          f"{', '.join(swept) or 'none'}")
    try:
        points = sorted({float(v.split("=", 1)[1]) for v in axes[refine.axis]})
    except ValueError:
        raise ConfigError(f"refine.axis: {refine.axis} has values that are not numbers") from None
    if len(points) < 2:
        raise ConfigError(f"refine.axis: {refine.axis} needs at least 2 distinct values to bracket a crossing, got "
                          f"{', '.join(f'{p:g}' for p in points)}")
    if refine.scale == "log" and points[0] <= 0:
        raise ConfigError(f"refine.axis: a log-scale refinement needs values > 0, got {points[0]:g}")
    return points


@dataclass
class Combination:
    """One combination of the other axes and its points: {x: that point's trials (one per seed)}."""

    values: dict[str, str]
    points: dict[float, list[Trial]] = field(default_factory=dict)
    initial: list[float] = field(default_factory=list)
    rounds: int = 0
    status: str = "open"  # open | waiting | located | below range | above range | budget | failed

    @property
    def added_trials(self) -> int:
        return sum(len(t) for x, t in self.points.items() if x not in self.initial)


@dataclass(frozen=True)
class Bracket:
    combination: dict[str, str]
    lower: float | None
    upper: float | None
    estimate: float
    rounds: int
    trials: int  # all trials of the combination (initial grid and refinement)
    added: int  # of which the refinement's
    status: str


class Refinement:
    """A sweep's refinement, replayed from the finished trials' values (`advance`)."""

    def __init__(self, refine: Refine, trials: list[Trial], overrides: Sequence[str], composer: Composer | None = None):
        self.refine, self.predicate, self.overrides = refine, refine.predicate, list(overrides)
        self.composer = composer or Composer()
        self.combinations: dict[tuple, Combination] = {}
        for trial in trials:
            others = {k: v for k, v in trial.swept.items() if k not in (refine.axis, SEED_AXIS)}
            combo = self.combinations.setdefault(tuple(others.items()), Combination(others))
            combo.points.setdefault(float(trial.swept[refine.axis]), []).append(trial)
        for combo in self.combinations.values():
            combo.initial = sorted(combo.points)
        # An integer axis (data.batch_size, data.n_train: ints in the composed config) gets integer midpoints.
        self.integer = all(type(flatten(t.config).get(refine.axis)) is int for t in trials)

    def advance(self, values: dict[str, dict], given_up: set[str] = frozenset()) -> list[Trial]:
        """Replay the rounds as far as `values` (trial_id -> its seed values, finished trials only) reach; the
        trials to run next (empty when every combination is done). `given_up`: trials this driver ran that did
        not finish, which end their combination as `failed`. Each pass adds one midpoint to every combination
        whose points are all finished, all composed in one batch."""
        while True:
            midpoints = []
            for combo in self.combinations.values():
                if combo.status not in ("open", "waiting"):
                    continue
                missing = [t for ts in combo.points.values() for t in ts if t.trial_id not in values]
                if any(t.trial_id in given_up for t in missing):
                    combo.status = "failed"
                elif missing:
                    combo.status = "waiting"
                else:
                    x = self._next_point(combo, values)
                    if x is not None:
                        midpoints.append((combo, x))
            if not midpoints:
                return [t for c in self.combinations.values() if c.status == "waiting"
                        for ts in c.points.values() for t in ts if t.trial_id not in values]
            for (combo, x), trials in zip(midpoints, self._point_trials(midpoints)):
                combo.points[x] = trials
                combo.rounds, combo.status = combo.rounds + 1, "open"

    def _next_point(self, combo: Combination, values: dict[str, dict]) -> float | None:
        """The next midpoint of a combination whose points are all finished, or None with its final status."""
        lower, upper = self._bracket(combo, values)
        if upper is None:
            combo.status = "above range"
        elif lower is None:
            combo.status = "below range"
        elif self.refine.located(lower, upper):
            combo.status = "located"
        elif combo.rounds >= self.refine.max_rounds or (
                self.refine.max_trials is not None and combo.added_trials >= self.refine.max_trials):
            combo.status = "budget"
        else:
            x = self.refine.midpoint(lower, upper)
            x = float(round(x)) if self.integer else x
            if x not in combo.points and lower < x < upper:
                return x
            combo.status = "located"  # no representable point left between them
        return None

    def _point_trials(self, midpoints: list[tuple[Combination, float]]) -> list[list[Trial]]:
        """The trials (one per seed) of each combination at its axis value x: ordinary trials, same identity."""
        values = [str(int(x)) if self.integer else repr(x) for _, x in midpoints]
        override_lists = [[*self.overrides, *(f"{k}={v}" for k, v in combo.values.items()),
                           f"{self.refine.axis}={value}"] for (combo, _), value in zip(midpoints, values)]
        return [[replace(t, swept={**combo.values, self.refine.axis: param_text(x),
                                   **{k: v for k, v in t.swept.items() if k == SEED_AXIS}}) for t in trials]
                for (combo, x), trials in zip(midpoints, expand_all(override_lists, self.composer))]

    def _bracket(self, combo: Combination, values: dict[str, dict]) -> tuple[float | None, float | None]:
        plateau = None
        if self.predicate.plateau_metric:
            lowest = combo.initial[:self.refine.plateau_points]
            metric = self.predicate.plateau_metric
            plateau = sum(sum(float(values[t.trial_id][metric]) for t in combo.points[x]) / len(combo.points[x])
                          for x in lowest) / len(lowest)
        holds = {x: self.predicate.holds([values[t.trial_id] for t in ts], plateau)
                 for x, ts in sorted(combo.points.items())}
        upper = next((x for x, h in holds.items() if h), None)
        if upper is None:
            return max(holds), None
        below = [x for x, h in holds.items() if x < upper and not h]
        return (max(below) if below else None), upper

    def brackets(self, values: dict[str, dict]) -> list[Bracket]:
        """Every combination's bracket from the finished points (call after advance)."""
        out = []
        for combo in self.combinations.values():
            done = {x: ts for x, ts in combo.points.items() if all(t.trial_id in values for t in ts)}
            lower = upper = None
            if all(x in done for x in combo.initial[:self.refine.plateau_points]):  # the plateau is known
                lower, upper = self._bracket(Combination(combo.values, done, combo.initial), values)
            out.append(Bracket(combo.values, lower, upper, self.refine.estimate(lower, upper), combo.rounds,
                               sum(len(t) for t in combo.points.values()), combo.added_trials, combo.status))
        return out

    def uniform_grid_trials(self) -> int:
        """Trials of a uniform grid at the tolerance over the same range and seeds (what refinement saves)."""
        total = 0
        for combo in self.combinations.values():
            lo, hi, seeds = combo.initial[0], combo.initial[-1], len(combo.points[combo.initial[0]])
            width = math.log(hi / lo) / math.log(1 + self.refine.tolerance) if self.refine.scale == "log" else \
                (hi - lo) / (self.refine.tolerance * max(abs(lo), abs(hi)))
            total += seeds * (math.ceil(width - 1e-9) + 1)
        return total
