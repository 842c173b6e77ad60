"""Per-layer Hessian sensitivity (HAWQ: top eigenvalue of a layer's Hessian block; HAWQ-V2: its trace).

A probe with probe.per_layer measures, for each parameter block (layer) with its own products, the trace by
Hutchinson (layer_trace/<param>, standard error layer_trace_se/<param>) and the top eigenvalue by Lanczos
(layer_lambda_max/<param>). layer_sensitivity pools the probed trials (leaving out diverged ones) per layer:
  trace       mean over the trials; its standard error is std/sqrt(n) over the trials (ddof = 1) when n >= 2,
              the one trial's Hutchinson standard error when n = 1;
  lambda_max  mean over the trials;
  rank        1 = the most sensitive layer, by trace (ties and missing traces by lambda_max).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("layer", "rank", "trace", "trace_se", "lambda_max", "n")


def layer_sensitivity(layers: pd.DataFrame) -> pd.DataFrame:
    """From probes.layer_table: one row per layer, ranked (module docstring)."""
    usable = layers[layers["outcome"] != "diverged"]
    rows = []
    for layer, part in usable.groupby("layer", sort=True):
        trace = part["trace"].astype(float)
        trace = trace[np.isfinite(trace)]
        if len(trace) >= 2:
            se = float(trace.sem())
        elif len(trace) == 1:
            se = float(part.loc[trace.index, "trace_se"].iloc[0])
        else:
            se = np.nan
        lam = part["lambda_max"].astype(float)
        rows.append({"layer": layer, "trace": trace.mean() if len(trace) else np.nan, "trace_se": se,
                     "lambda_max": lam[np.isfinite(lam)].mean() if np.isfinite(lam).any() else np.nan,
                     "n": len(part)})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    table = table.sort_values(["trace", "lambda_max"], ascending=False, na_position="last", kind="stable")
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)
