"""The curvature part of the sweep report: what probes and sharpness trajectories measured, drawn.

Each figure is drawn only when the records hold what it needs; a sweep without any makes no figure, table or
line here. Seed averages are mean ± standard error std/sqrt(n) over the finished, non-diverged trials
(frames.aggregate). Lines within a figure are the values of the swept params that vary besides the figure's
axis (figure_lines), colours C0, C1, ...

One module per figure states what it needs and what it draws:
- trajectory_section   sharpness_trajectories.png, trajectories.csv: sharpness along training against 2/lr
- lambda_max_section   lambda_max_vs_B.png: end-of-training lambda_max against B
- batch_ratio_section  batch_ratio.png: E[lambda_max(H_B)] / lambda_max(H) against the probe batch size
- stable_lr_section    lr_max_vs_B.png, lr_max.csv, lr_max_fits.csv: the largest stable lr against B
- density_section      spectral_density.png: Hessian spectral densities (SLQ)
- wu_su_section        wu_su.png, wu_su.csv: Wu & Su linear stability of SGD
- layer_section        layer_sensitivity.png, layers.csv: per-layer trace and top eigenvalue
probes.csv holds one row per probed trial (probes.probe_frame) with its params, metrics and wu_su value.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sgdlab.analysis.batch_ratio_section import batch_ratio
from sgdlab.analysis.density_section import spectral_densities
from sgdlab.analysis.lambda_max_section import sharpness_vs_batch
from sgdlab.analysis.layer_section import layer_sensitivities
from sgdlab.analysis.report_section import Files, Numbers
from sgdlab.analysis.stable_lr_section import stable_lr
from sgdlab.analysis.trajectory_section import sharpness_trajectories
from sgdlab.analysis.wu_su_section import with_wu_su, wu_su_check


def curvature_sections(frame: pd.DataFrame, probes: pd.DataFrame, histories: dict, densities: dict,
                       out_dir: Path, numbers: Numbers, lr_brackets: pd.DataFrame | None = None
                       ) -> tuple[list[str], Files, Files]:
    """(markdown lines, figures, tables) of every curvature figure the records allow (module docstring); the
    fitted slopes of lr_max(B) are added to `numbers`. lr_brackets: a refinement of optim.lr, which then defines
    lr_max."""
    out_dir = Path(out_dir)
    lines: list[str] = []
    figures: Files = []
    tables: Files = []
    probes = with_wu_su(probes)
    if len(probes):
        csv = out_dir / "probes.csv"
        probes.to_csv(csv, index=False)
        tables.append((csv, "one row per probed trial: params of its train run, probe metrics, wu_su"))
        matrix = probes["matrix"].iloc[0]
        lines += ["", f"Probes: {len(probes)} probed trials (matrix: {matrix}; "
                      f"{int((~probes['lanczos_converged'].astype(bool)).sum())} with a Lanczos residual above "
                      "tolerance)."]
    for section in (lambda: sharpness_trajectories(frame, histories, out_dir),
                    lambda: sharpness_vs_batch(frame, probes, out_dir),
                    lambda: batch_ratio(probes, out_dir),
                    lambda: stable_lr(frame, out_dir, numbers, lr_brackets),
                    lambda: spectral_densities(probes, densities, out_dir),
                    lambda: wu_su_check(probes, out_dir),
                    lambda: layer_sensitivities(probes, out_dir)):
        text, drawn, written = section()
        lines += text
        figures += drawn
        tables += written
    if lines:
        lines = ["", "### Curvature", *lines]
    return lines, figures, tables
