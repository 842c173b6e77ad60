"""Hessian spectral densities from stochastic Lanczos quadrature.

Needs probes with a spectrum/density.csv. spectral_density.png: one curve per probed trial, log density axis
down to DENSITY_FLOOR of the largest value (smaller densities are not drawn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import one_panel, place_legend
from sgdlab.analysis.figure_lines import line_keys, line_parts
from sgdlab.analysis.report_section import Files
from sgdlab.analysis.spectra import DENSITY_FLOOR


def spectral_densities(probes: pd.DataFrame, densities: dict, out_dir: Path) -> tuple[list[str], Files, Files]:
    if probes.empty or not densities:
        return [], [], []
    chosen = {}
    for _, row in probes.iterrows():
        run = next((r for r in str(row["probe_runs"]).split(";") if r in densities), None)
        if run is not None:
            chosen[row["trial_id"]] = run
    drawn = probes[probes["trial_id"].isin(chosen)]
    if drawn.empty:
        return [], [], []
    keys = line_keys(drawn, [])
    if not keys and len(drawn) > 1:
        keys = ["seed"] if drawn["seed"].nunique() == len(drawn) else []
    floor = DENSITY_FLOOR * max(float(np.nanmax(densities[r]["density"])) for r in chosen.values())
    with plots.styled():
        fig, (ax,) = one_panel(len(line_parts(drawn, keys)))
        n = 0
        for i, (name, part) in enumerate(line_parts(drawn, keys)):
            for j, trial in enumerate(part["trial_id"]):
                table = densities[chosen[trial]]
                density = table["density"].astype(float)
                ax.plot(table["eigenvalue"], density.where(density >= floor), color=f"C{i % 10}",
                        lw=1, alpha=0.85, label=(name or "density") if j == 0 else None)
            n += 1
        ax.set(yscale="log", xlabel="eigenvalue of H", ylabel="spectral density (SLQ)",
               title="Hessian spectral density (SLQ)")
        ax.set_ylim(bottom=floor)
        place_legend(ax, n)
        path = plots.save(fig, out_dir / "spectral_density.png")
    lines = ["", f"- Spectral densities (stochastic Lanczos quadrature) of {len(drawn)} probed trials: "
                 "spectral_density.png (log density axis)."]
    return lines, [(path, "Hessian spectral densities (SLQ), one curve per probed trial")], []
