"""A refinement's criterion: a predicate on one trial's records, written `LEFT OP RIGHT`.

    outcome == diverged                  the trial's outcome (== or !=; converged | diverged | max_steps)
    test_error > 0.1                     a final metric against a number
    final train_loss > initial train_loss   the last logged value against the first (step 0); a diverged
                                         trial's final loss counts as +inf
    max train_loss > 1.5 x initial train_loss   the largest logged value (every train.log_every steps: log
                                         every step to see every spike) against k times another term; a
                                         diverged trial's largest loss counts as +inf
    weight_change > 2 x plateau          against k times the plateau: the metric's seed mean averaged over the
                                         lowest `plateau_points` points of the axis (of the same combination)

OP is one of == != > >= < <=. Metrics are those every train run logs (METRICS). With several seeds at a point
the criterion holds on `any` seed, on `all`, or on the `mean` (metrics averaged over seeds before comparing; an
outcome test holds when more than half of the seeds have it).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

import numpy as np

from sgdlab.config.schema import ConfigError

METRICS = ("train_loss", "train_error", "test_loss", "test_error", "n_unfitted", "min_margin", "weight_delta",
           "weight_change", "train_time", "steps", "w_par", "w_perp", "w_ratio", "w0_norm")
OUTCOMES = ("converged", "diverged", "max_steps")
BLOWN_UP = ("train_loss", "test_loss")  # a diverged trial's final loss counts as +inf (it blew up)
OPERATORS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt,
             "<=": operator.le}
SEED_RULES = ("any", "all", "mean")
PATTERN = re.compile(r"^\s*(?P<left>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<right>.+?)\s*$")
TERM = re.compile(r"^(?:(?P<k>[0-9.eE+-]+)\s*x\s*)?(?:(?P<when>final|initial|max)\s+)?(?P<metric>[a-z_]+)$")
HISTORY = ("initial", "max")  # values read from a metric's logged history, not its final value
PLATEAU = re.compile(r"^(?:(?P<k>[0-9.eE+-]+)\s*x\s*)?plateau$")


@dataclass(frozen=True)
class Term:
    """One side: a number, an outcome name, `outcome`, k x a metric (its final, initial or largest logged value),
    or k x plateau."""

    kind: str  # number | outcome | outcome_name | metric | plateau
    value: float = 1.0  # the number, or the factor k of a metric or the plateau
    name: str = ""
    when: str = "final"  # of a metric: final | initial | max


@dataclass(frozen=True)
class Criterion:
    text: str
    left: Term
    op: str
    right: Term
    seeds: str = "any"

    @property
    def history_metrics(self) -> list[tuple[str, str]]:
        """(when, metric) of the values read from logged histories: `initial NAME` (the first) and `max NAME`
        (the largest)."""
        return [(t.when, t.name) for t in (self.left, self.right) if t.kind == "metric" and t.when in HISTORY]

    @property
    def plateau_metric(self) -> str | None:
        """The metric the plateau is taken of (the other side's), if the criterion uses one."""
        return self.left.name if self.right.kind == "plateau" else None

    def holds(self, seeds: list[dict], plateau: float | None = None) -> bool:
        """Whether the criterion holds at one point, from its seeds' values: each a dict with 'outcome', the final
        metrics, and 'initial:NAME' and 'max:NAME' for the values read from histories."""
        compare = OPERATORS[self.op]
        if self.left.kind == "outcome":
            hits = [compare(s["outcome"], self.right.name) for s in seeds]
            return _combine(hits, self.seeds, mean=lambda: np.mean(hits) > 0.5)

        def value(term: Term, seed: dict) -> float:
            if term.kind == "number":
                return term.value
            if term.kind == "plateau":
                return term.value * plateau
            if term.when != "initial" and term.name in BLOWN_UP and seed.get("outcome") == "diverged":
                return math.inf
            return term.value * float(seed[term.name if term.when == "final" else f"{term.when}:{term.name}"])

        hits = [bool(compare(value(self.left, s), value(self.right, s))) for s in seeds]
        mean = lambda term: float(np.mean([value(term, s) for s in seeds]))  # noqa: E731
        return _combine(hits, self.seeds, mean=lambda: bool(compare(mean(self.left), mean(self.right))))


def _combine(hits: list[bool], rule: str, mean) -> bool:
    return any(hits) if rule == "any" else all(hits) if rule == "all" else bool(mean())


def _finite(text: str, where: str) -> float | None:
    """The number `text` reads as (None if it is none); ConfigError if it is not finite: nothing compares with
    NaN, and a bound at infinity never holds."""
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {text!r} is not a finite number")
    return number


def _term(text: str, where: str) -> Term:
    if text == "outcome":
        return Term("outcome")
    if text in OUTCOMES:
        return Term("outcome_name", name=text)
    plateau = PLATEAU.match(text)
    k = _finite(plateau.group("k") or "1", where) if plateau else None
    if k is not None:
        return Term("plateau", value=k)
    number = _finite(text, where)
    if number is not None:
        return Term("number", value=number)
    term = TERM.match(text)
    if not term:
        raise ConfigError(f"{where}: cannot read {text!r} (a number, an outcome, [k x] [final|initial|max] METRIC "
                          f"or k x plateau)")
    if term.group("metric") not in METRICS:
        raise ConfigError(f"{where}: unknown metric {term.group('metric')!r}; allowed: {', '.join(METRICS)}")
    k = _finite(term.group("k"), where) if term.group("k") else 1.0
    if k is None:
        raise ConfigError(f"{where}: cannot read the factor of {text!r} (k x METRIC, k a number)")
    return Term("metric", value=k, name=term.group("metric"), when=term.group("when") or "final")


def parse(text: str, seeds: str = "any", where: str = "refine.criterion") -> Criterion:
    """The criterion of `text`; ConfigError (one line) when it cannot be read."""
    if seeds not in SEED_RULES:
        raise ConfigError(f"refine.seeds: must be one of {', '.join(SEED_RULES)}, got {seeds!r}")
    match = PATTERN.match(str(text or ""))
    if not match:
        raise ConfigError(f"{where}: {text!r} is not LEFT OP RIGHT with OP one of {' '.join(OPERATORS)}")
    left, op, right = _term(match.group("left"), where), match.group("op"), _term(match.group("right"), where)
    if left.kind == "outcome" or right.kind == "outcome":
        if left.kind != "outcome" or right.kind != "outcome_name" or op not in ("==", "!="):
            raise ConfigError(f"{where}: compare the outcome as `outcome == NAME` or `outcome != NAME`, NAME one "
                              f"of {', '.join(OUTCOMES)}")
    elif left.kind != "metric" or right.kind == "outcome_name":
        raise ConfigError(f"{where}: the left side must be a metric ({', '.join(METRICS)}) or `outcome`")
    return Criterion(str(text).strip(), left, op, right, seeds)
