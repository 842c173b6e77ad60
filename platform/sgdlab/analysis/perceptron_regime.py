"""The SGD regime a hinge-perceptron trial on the chi-depleted teacher task ended in, from its params and final w_par.

Sclocchi & Wyart ("On the different regimes of SGD", PNAS 2024, arXiv 2309.10688; the perceptron of Sclocchi,
Geiger & Wyart, ICML 2023) separate three regimes of SGD (batch B, lr = T B) on this task: noise-dominated SGD,
governed by T alone, with ||w|| ~ T P^gamma, gamma = 1/(1+chi); SGD dominated by its large first step, for B above
B* ~ P^gamma; and gradient descent, for T below a crossover T_c set by the hinge margin. The claim of
analysis.perceptron is about the first. Each condition is measured on the trial's own final informative weight
w_par = (w - w0) . e_1 (training.pack.teacher_frame), in the units it trains in (F = alpha (w - w0) . x / sqrt(d),
fitted when y F >= 1; d = data.dim):

  first_step_share = lr E|x_1| / (sqrt(d) w_par) = B / B*,  E|x_1| = sqrt(2) Gamma(1 + chi/2) / Gamma((1+chi)/2).
      At w0 every point is unfitted (F = 0), so the first update is lr times the batch mean of y x / sqrt(d), whose
      e_1 component has expectation lr E|x_1| / sqrt(d). Every later update adds lr/B |x_1| / sqrt(d) >= 0 per
      unfitted point of its batch, so w_par only grows, and the share is the part of it the first step made.
      B* = B / share is the batch whose first step alone would make all of w_par: the crossover lr ~ ||w|| ~ T P^gamma,
      B* ~ P^gamma, of the paper. A first-step part that does not grow with P lowers the fitted P exponent of w_par
      by about gamma x share.
  margin_points = P Pr(|x_1| < sqrt(d) / (alpha w_par)),  Pr(|x_1| < e) = P((1+chi)/2, e^2/2)
      (the regularized lower incomplete gamma function: |x_1| = sqrt(2 G), G ~ Gamma((1+chi)/2)): the training
      points whose teacher-direction output alpha w_par |x_1| / sqrt(d) is below the margin 1. Where they are O(1)
      or more, the margin decides where training stops, as in gradient descent (the nearest point is fitted at the
      margin, whatever T); where they are << 1 the noise does: T above T_c ~ margin (alpha T >> 1: the alpha = 1
      dynamics forgets its margin and w - w0 grows as T at fixed P).

regime: 'noise-dominated' when first_step_share <= MAX_FIRST_STEP_SHARE and margin_points <= MAX_MARGIN_POINTS
(B at least ten times below B*; T so far above T_c that a tenth of a point lies in the margin). Otherwise the
conditions it fails: 'large first step' (towards the first-step regime), 'margin-limited' (towards gradient
descent), or 'large first step + margin-limited'. 'unknown' where the params or a finite w_par > 0 are not
recorded (another model or task, or a trial that did not finish). The claim's other condition, P/d large, is the
column P_over_d.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

MAX_FIRST_STEP_SHARE = 0.1
MAX_MARGIN_POINTS = 0.1
NOISE = "noise-dominated"
FIRST_STEP = "large first step"
MARGIN = "margin-limited"
UNKNOWN = "unknown"
NEEDED = ("lr", "alpha", "P", "chi", "d", "w_par")
COLUMNS = ("P_over_d", "first_step_share", "B_star", "margin_points", "regime")


def mean_abs_x1(chi) -> np.ndarray:
    """E|x_1| = sqrt(2) Gamma(1 + chi/2) / Gamma((1+chi)/2) for the density ~ |x_1|^chi exp(-x_1^2/2)."""
    chi = np.asarray(chi, dtype=float)
    return np.sqrt(2.0) * np.exp(special.gammaln(1 + chi / 2) - special.gammaln((1 + chi) / 2))


def boundary_fraction(chi, eps) -> np.ndarray:
    """Pr(|x_1| < eps) = P((1+chi)/2, eps^2/2), the regularized lower incomplete gamma function."""
    return special.gammainc((1 + np.asarray(chi, dtype=float)) / 2, np.asarray(eps, dtype=float) ** 2 / 2)


def _label(share: float, margin: float) -> str:
    if not (np.isfinite(share) and np.isfinite(margin)):
        return UNKNOWN
    failed = [name for name, bad in ((FIRST_STEP, share > MAX_FIRST_STEP_SHARE),
                                     (MARGIN, margin > MAX_MARGIN_POINTS)) if bad]
    return " + ".join(failed) or NOISE


def with_regimes(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame (analysis.frames.trial_frame) with the columns COLUMNS (module docstring); NaN and 'unknown'
    where a needed column (NEEDED) is missing or not a finite positive number."""
    values = {c: pd.to_numeric(frame[c], errors="coerce") if c in frame else pd.Series(np.nan, index=frame.index)
              for c in NEEDED}
    finished = frame["status"] == "finished" if "status" in frame else True
    w_par = values["w_par"].where(finished & (values["w_par"] > 0))
    root_d = np.sqrt(values["d"])
    share = values["lr"] * mean_abs_x1(values["chi"]) / (root_d * w_par)
    margin = values["P"] * boundary_fraction(values["chi"], root_d / (values["alpha"] * w_par))
    out = frame.copy()
    out["P_over_d"] = values["P"] / values["d"]
    out["first_step_share"] = share
    out["B_star"] = pd.to_numeric(frame["B"], errors="coerce") / share if "B" in frame else np.nan
    out["margin_points"] = margin
    out["regime"] = [_label(s, m) for s, m in zip(share, margin)]
    return out
