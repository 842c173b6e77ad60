"""Expansion of a sweep into trials: Hydra's override grammar, cartesian product, compose, validate, identity.

Every override (sweep file, then command line) is parsed by Hydra's OverridesParser. A later override of the
same key replaces an earlier one. Sweep overrides (`a,b`, `range(..)`, `choice(..)`) become axes; the trials
are the cartesian product of the axes in order of first appearance. Derived values (lr from T and B) are
resolved once here, in the driver, so every worker receives a complete config.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

from sgdlab.config.compose import Composer, glob_options, parse_override
from sgdlab.config.schema import MAX_TRIALS, ConfigError
from sgdlab.sweep.identity import trial_id
from sgdlab.params import flatten, param_text


@dataclass(frozen=True)
class Trial:
    trial_id: str
    config: dict
    overrides: tuple[str, ...]
    swept: dict[str, str]  # axis key -> this trial's value (sgdlab.params.param_text), for tables and run names



def swept_values(config: dict, overrides: dict[str, str]) -> dict[str, str]:
    """axis key -> the trial's value as its param shows it (param_text of the composed value: '1' for
    model.alpha=1.0, the derived lr of a T axis as composed), or the override's value for a group choice."""
    flat = flatten(config)
    return {k: param_text(flat[k]) if k in flat else line.split("=", 1)[1] for k, line in overrides.items()}


def parse_axes(overrides: Sequence[str], max_trials: int = MAX_TRIALS) -> dict[str, list[str]]:
    """key -> list of complete override strings (one for a plain override, several for an axis). An axis is a
    list, range() or choice() of values, or glob() of a config group's options; interval() is refused (a grid
    needs values). The grid, the product of the axes' lengths, is counted before anything is expanded and refused
    above max_trials (an axis is read up to max_trials + 1 values)."""
    axes: dict[str, list[str]] = {}
    for line in overrides:
        parsed = parse_override(line)
        key = parsed.get_key_element()
        name = key.lstrip("+~")  # '+key' and 'key' name the same axis
        if parsed.is_interval_sweep():
            raise ConfigError(f"{name}: {line.split('=', 1)[1]} is an interval, and a grid needs discrete values: use "
                              "range() or a list, or an Optuna sweeper (sgdlab-run -m hydra/sweeper=optuna)")
        chosen = glob_options(name, parsed)
        if chosen is not None:
            axes[name] = [f"{key}={v}" for v in chosen]
        elif parsed.is_sweep_override():
            try:
                values = list(itertools.islice(parsed.sweep_string_iterator(), max_trials + 1))
            except ValueError as exc:  # e.g. range(0,5,0)
                raise ConfigError(f"{name}: {exc} in {line!r}") from None
            if not values:
                raise ConfigError(f"{name}: empty axis in {line!r}")
            axes[name] = [f"{key}={v}" for v in values]
        else:
            axes[name] = [line]
    _check_grid_size(axes, max_trials)
    return axes


def _check_grid_size(axes: dict[str, list[str]], max_trials: int) -> None:
    lengths = {key: len(values) for key, values in axes.items() if len(values) > 1}
    if math.prod(lengths.values()) > max_trials:
        shape = " x ".join(f"{key} ({n if n <= max_trials else f'more than {max_trials}'})"
                           for key, n in lengths.items())
        raise ConfigError(f"the grid {shape} has more than {max_trials} trials, the limit (sgdlab sweep "
                          "--max-trials): split the sweep or raise the limit")


def expand(overrides: Sequence[str], composer: Composer | None = None, max_trials: int = MAX_TRIALS) -> list[Trial]:
    """All trials of a list of overrides (base, axes and command line, in that order); ConfigError for a grid of
    more than max_trials."""
    return expand_all([overrides], composer, max_trials)[0]


def expand_all(override_lists: Sequence[Sequence[str]], composer: Composer | None = None,
               max_trials: int = MAX_TRIALS) -> list[list[Trial]]:
    """expand() of several override lists, composed in one batch (Hydra composes once per set of group choices,
    about 80 ms; each trial then costs about a millisecond)."""
    axes_per_list = [parse_axes(overrides, max_trials) for overrides in override_lists]
    combos_per_list = [list(itertools.product(*axes.values())) for axes in axes_per_list]
    configs = iter((composer or Composer()).many([c for combos in combos_per_list for c in combos]))
    out = []
    for axes, combos in zip(axes_per_list, combos_per_list):
        swept_keys = [k for k, v in axes.items() if len(v) > 1]
        trials, seen = [], set()
        for combo in combos:
            config = next(configs)
            by_key = dict(zip(axes, combo))
            tid = trial_id(config)
            if tid in seen:  # two spellings of one config (lr vs temperature) are one trial
                continue
            seen.add(tid)
            swept = swept_values(config, {k: by_key[k] for k in swept_keys})
            trials.append(Trial(trial_id=tid, config=config, overrides=tuple(combo), swept=swept))
        out.append(trials)
    return out
