"""Stability of gradient steps: the edge of stability, the largest stable learning rate, Wu & Su's condition.

Edge of stability (Cohen et al. 2021). On a quadratic, GD with step lr is stable iff lr * lambda_max <= 2. During
full-batch GD the sharpness lambda_max rises until it reaches 2/lr and then hovers there. Per train run with a
`sharpness` history: eos_ratio = (lr / 2) * mean sharpness over the last EOS_TAIL of the recorded steps (the
points with step >= first + (1 - EOS_TAIL) (last - first)); 1 means at the edge, below 1 below it (smaller
batches end flatter).

Largest stable learning rate (Granziol et al. 2022: ~ B for SGD, ~ sqrt(B) for Adam, until it saturates). From
train runs over an (optimizer, B, lr) grid, per group (optimizer, B and any other swept param but lr, T and seed):
  an lr is stable      when every trial at it finished and none diverged (all seeds);
         unstable      when at least one finished trial at it diverged;
         undetermined  otherwise (a trial failed or is unfinished, and none diverged): skipped;
  lr_max = the largest stable lr below the smallest unstable lr, lr_unstable = that smallest unstable lr (the
  true threshold lies in [lr_max, lr_unstable)). Without an unstable lr, the grid's largest stable lr is only a
  lower bound (censored = True); without a stable lr below the smallest unstable one, lr_max is NaN. The power
  law lr_max ~ B^b is fitted (fits.fit_power_law) per optimizer over the uncensored finite lr_max.

Linear stability of SGD (Wu & Su 2023). At an interpolating minimum, with N training points and batch size B,
p = (N - B) / (B (N - 1)) (1 for B = 1, 0 for B = N), SGD is linearly stable when
    lr * ((1 - p) lambda_max + p trace(H)) <= 2,
which is lr * trace(H) <= 2 for B = 1 and the GD condition lr * lambda_max <= 2 for B = N.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sgdlab.analysis.fits import MIN_FIT_POINTS, PowerLaw, fit_power_law

EOS_TAIL = 0.25
MLFLOW_INF = 1.7976931348623157e308  # what MLflow stores for an infinite metric value
REFERENCE_SLOPES = {"sgd": 1.0, "adam": 0.5}
REFERENCE_TEXT = {1.0: "1", 0.5: "1/2"}
WU_SU_BOUND = 2.0
RUN_COLUMNS = ("trial_id", "run_id", "outcome", "optimizer", "lr", "B", "P", "seed")


# --- edge of stability ---------------------------------------------------------------------------------------

def trajectory_frame(frame: pd.DataFrame, histories: dict, key: str = "sharpness") -> pd.DataFrame:
    """The history of metric `key` of each finished trial's run (frame: frames.trial_frame) as a long table:
    the trial's params and outcome, step, value; runs without points are left out. Values at MLflow's stand-in
    for infinity (+-1.797e308, the largest float) read as +-inf."""
    finished = frame[frame["status"] == "finished"]
    columns = [c for c in finished.columns if c in RUN_COLUMNS or "." in c or c in ("alpha", "T")]
    parts = []
    for _, row in finished.iterrows():
        points = histories.get(row["run_id"], {}).get(key, [])
        if points:
            steps, values = zip(*points)
            values = np.asarray(values, dtype=float)
            values = np.where(values >= MLFLOW_INF, np.inf, np.where(values <= -MLFLOW_INF, -np.inf, values))
            part = pd.DataFrame({"step": np.asarray(steps, dtype=float), "value": values})
            parts.append(part.assign(**{c: row[c] for c in columns}))
    if not parts:
        return pd.DataFrame(columns=[*columns, "step", "value"])
    return pd.concat(parts, ignore_index=True)[[*columns, "step", "value"]]


def eos_ratio(steps, sharpness, lr: float, tail: float = EOS_TAIL) -> float:
    """(lr / 2) x the mean sharpness over the last `tail` of the recorded steps (finite values); NaN if none."""
    s, v = np.asarray(steps, dtype=float), np.asarray(sharpness, dtype=float)
    if len(s) == 0 or not lr > 0:
        return math.nan
    keep = (s >= s.min() + (1 - tail) * (s.max() - s.min())) & np.isfinite(v)
    return float(lr / 2 * v[keep].mean()) if keep.any() else math.nan


def eos_table(trajectories: pd.DataFrame) -> pd.DataFrame:
    """Per run: its params and outcome, points, final_sharpness, threshold 2/lr and eos_ratio."""
    keys = [c for c in trajectories.columns if c not in ("step", "value")]
    rows = []
    for _, part in trajectories.groupby("run_id", sort=False):
        part = part.sort_values("step", kind="stable")
        first = part.iloc[0]
        rows.append({**{c: first[c] for c in keys}, "points": len(part), "final_sharpness": part["value"].iloc[-1],
                     "threshold": 2 / first["lr"] if first["lr"] > 0 else math.nan,
                     "eos_ratio": eos_ratio(part["step"], part["value"], first["lr"])})
    return pd.DataFrame(rows, columns=[*keys, "points", "final_sharpness", "threshold", "eos_ratio"])


# --- largest stable learning rate ----------------------------------------------------------------------------

def lr_states(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of `by` and lr: trial counts and the lr's state (stable | unstable | undetermined)."""
    finished = frame["status"] == "finished"
    work = frame[[*by, "lr"]].assign(n_trials=1, n_finished=finished,
                                      n_diverged=finished & (frame["outcome"] == "diverged"))
    table = work.groupby([*by, "lr"], dropna=False, sort=True).sum().reset_index()
    table["state"] = np.where(table["n_diverged"] > 0, "unstable",
                              np.where(table["n_finished"] == table["n_trials"], "stable", "undetermined"))
    return table


def largest_stable_lr(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of `by`: lr_max, lr_unstable, censored, n_lr (grid lrs), n_stable, n_unstable (criterion above)."""
    rows = []
    for values, part in lr_states(frame, by).groupby(by, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        unstable = part.loc[part["state"] == "unstable", "lr"]
        upper = unstable.min() if len(unstable) else math.inf
        stable = part.loc[(part["state"] == "stable") & (part["lr"] < upper), "lr"]
        rows.append({**dict(zip(by, values)), "lr_max": stable.max() if len(stable) else math.nan,
                     "lr_unstable": upper if len(unstable) else math.nan,
                     "censored": bool(len(stable)) and not len(unstable), "n_lr": len(part),
                     "n_stable": int((part["state"] == "stable").sum()),
                     "n_unstable": int((part["state"] == "unstable").sum())})
    return pd.DataFrame(rows, columns=[*by, "lr_max", "lr_unstable", "censored", "n_lr", "n_stable", "n_unstable"])


def refined_stable_lr(brackets: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The lr_max table of a refinement of optim.lr (sweep/refine.py), whose criterion defines instability:
    lr_max = the bracket's lower end, lr_unstable = its upper end, censored when no tried lr met the criterion
    (`above range`: lr_max is then the largest lr tried, a lower bound), n_lr = the combination's trials.
    `columns` renames the combination's axes (data.batch_size -> B, optim -> optimizer)."""
    table = brackets.rename(columns=columns).rename(columns={"lower": "lr_max", "upper": "lr_unstable"})
    for key in ("lr_max", "lr_unstable"):
        table[key] = pd.to_numeric(table[key], errors="coerce")
    if "B" in table:
        table["B"] = pd.to_numeric(table["B"])
    return table.assign(censored=table["status"] == "above range", n_lr=table["trials"], n_stable=np.nan,
                        n_unstable=np.nan)


def predicted_stable_lr(frame: pd.DataFrame) -> pd.DataFrame:
    """Per B: the prediction lr = 2 / E[lambda_max(H_B)] from the step-0 probe (probe.at_start), each trial's
    batch_lambda_max/B<its B> averaged over the trials at that B (the start does not depend on lr or the
    optimizer), the full-batch limit 2 / lambda_max(H) (from batch_lambda_max_ratio) and, where the probe measured
    it (probe.noise), the gradient noise scale B_noise = tr(Sigma) / |g|^2 at step 0; columns B, lambda_B,
    lambda_B_se (over seeds), lr_predicted, lr_full_batch, n, B_noise. Empty without those metrics."""
    columns = ["B", "lambda_B", "lambda_B_se", "lr_predicted", "lr_full_batch", "n", "B_noise"]
    rows = []
    for b, part in frame[frame["status"] == "finished"].groupby("B"):
        column, ratio = f"batch_lambda_max/B{batch_text(b)}", f"batch_lambda_max_ratio/B{batch_text(b)}"
        if column not in part:
            continue
        per_seed = part.groupby("seed")[[column, ratio]].mean().dropna()
        if per_seed.empty:
            continue
        lam = per_seed[column]
        se = float(lam.sem())  # NaN for one seed
        noise = part.groupby("seed")["noise_scale"].mean().mean() if "noise_scale" in part else np.nan
        rows.append({"B": b, "lambda_B": float(lam.mean()), "lambda_B_se": se, "lr_predicted": 2 / float(lam.mean()),
                     "lr_full_batch": 2 / float((lam / per_seed[ratio]).mean()), "n": len(lam),
                     "B_noise": float(noise)})
    return pd.DataFrame(rows, columns=columns)


def batch_text(value) -> str:
    """A batch size as it appears in a metric name (B16, not B16.0)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def stable_lr_fit(table: pd.DataFrame) -> PowerLaw | None:
    """lr_max ~ B^b over the uncensored finite lr_max of one line (one optimizer); None with fewer than
    MIN_FIT_POINTS distinct B."""
    usable = table[~table["censored"].astype(bool) & np.isfinite(table["lr_max"].astype(float))]
    if usable["B"].nunique() < MIN_FIT_POINTS:
        return None
    return fit_power_law(usable["B"], usable["lr_max"])


def reference_slope(optimizer) -> float | None:
    """The expected exponent of lr_max ~ B^b: 1 for SGD, 1/2 for Adam (None for others)."""
    return REFERENCE_SLOPES.get(str(optimizer).lower())


# --- Wu & Su -------------------------------------------------------------------------------------------------

def wu_su_p(N, B):
    """p = (N - B) / (B (N - 1)): the weight of trace(H) in Wu & Su's condition."""
    N, B = np.asarray(N, dtype=float), np.asarray(B, dtype=float)
    return (N - B) / (B * (N - 1))


def wu_su(lr, lambda_max, trace, B, N):
    """lr ((1 - p) lambda_max + p trace(H)), linearly stable when <= WU_SU_BOUND = 2."""
    p = wu_su_p(N, B)
    return np.asarray(lr, dtype=float) * ((1 - p) * np.asarray(lambda_max, dtype=float)
                                          + p * np.asarray(trace, dtype=float))
