"""A section of the sweep report: (markdown lines for summary.md, figures, tables), each file with a caption, and
the headline numbers it adds to `Numbers` (fitted exponents, T_c values, ...), logged as metrics of the sweep's run.

Values are written as mean ± standard error; a table shows at most MAX_ROWS rows in summary.md, its CSV holds
all of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.frames import key_columns

MAX_ROWS = 30  # table rows written into summary.md (the CSVs hold all)
Files = list[tuple[Path, str]]  # path, caption
Numbers = dict[str, float]  # metric name on the sweep's run -> value


def number_key(*parts) -> str:
    """A metric name from its parts, 'summary/T_c/P_512': characters MLflow refuses in a name ('=', ',', ...) become
    '_', parts are joined by '/'."""
    return "/".join(["summary", *(re.sub(r"[^\w.\- ]", "_", str(p)) for p in parts if str(p))])


def plus_minus(mean: float, se: float, digits: int = 3) -> str:
    """'1.83 ± 0.05', or '1.83' without a standard error."""
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}g}" + (f" ± {se:.2g}" if np.isfinite(se) else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[:MAX_ROWS]]
    return lines + ([f"| ... {len(rows) - MAX_ROWS} more rows in the CSV |" + " |" * (len(header) - 1)]
                    if len(rows) > MAX_ROWS else [])


def splits(frame: pd.DataFrame, cell: list[str], swept: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(file suffix, title, part) for each value of the swept params that vary within the cells `cell`: of
    those, the key columns (B rather than an lr derived from T and B)."""
    by_cell = frame.groupby([*cell, "seed"], dropna=False)
    within = [c for c in swept if c not in cell and by_cell[c].nunique(dropna=False).max() > 1]
    split = key_columns(frame, within, given=[*cell, "seed"])
    if not split:
        return [("", "", frame)]
    out = []
    for values, part in frame.groupby(split, dropna=False, sort=True):
        pairs = [f"{c}={plots.number(v)}" for c, v in zip(split, values)]
        out.append(("_" + re.sub(r"[^\w.=-]", "_", "_".join(pairs)), ", ".join(pairs), part))
    return out
