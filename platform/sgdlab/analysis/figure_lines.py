"""The lines of a curvature figure: one per value combination of the swept params that vary besides its axes.

A line's keys are the key columns (frames.key_columns) of the swept params other than the figure's axes and the
seed: B rather than an lr derived from T and B. Curvature is read against lr and B, so the temperature
T = lr / (B width) is never a key when lr varies. A line is named `k1=v1, k2=v2` and drawn in colour C<i>.
"""

from __future__ import annotations

import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.frames import key_columns, swept_columns


def line_keys(table: pd.DataFrame, axes: list[str]) -> list[str]:
    """Key columns of the params that vary besides `axes` and seed: what tells the lines of a figure apart.
    Curvature is read against lr and B, so T = lr / (B width) is never a key when lr varies."""
    candidates = [c for c in swept_columns(table) if c not in axes]
    if "lr" in candidates or "lr" in axes:
        candidates = [c for c in candidates if c != "T"]
    given = [c for c in [*axes, "seed"] if c in table]
    return key_columns(table, candidates, given=given) if candidates else []


def line_parts(table: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(name, part) per value combination of `keys`; one unnamed line without keys."""
    if not keys:
        return [("", table)]
    out = []
    for values, part in table.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        out.append((", ".join(f"{k}={plots.number(v)}" for k, v in zip(keys, values)), part))
    return out
