"""The curvature part of the sweep report: what probes and sharpness trajectories measured, drawn.

Each figure is drawn only when the records hold what it needs; a sweep without any makes no figure, table or
line here. Seed averages are mean ± standard error std/sqrt(n) over the finished, non-diverged trials
(frames.aggregate). Lines within a figure are the values of the swept params that vary besides the figure's
axis (their key columns: B rather than an lr derived from T and B), colours C0, C1, ...

- sharpness_trajectories.png  needs train runs with a `sharpness` history: one panel per lr, the sharpness
  against step of each run and the line 2/lr (above it the train loss, log scale, when logged); diverged runs
  dotted. trajectories.csv: per run, the final sharpness and eos_ratio (stability.eos_ratio).
- lambda_max_vs_B.png  needs >= 2 batch sizes with an end-of-training lambda_max: the probe's `sharpness`, else
  the last point of the run's sharpness trajectory; dotted, 2/lr of each line with one lr.
- batch_ratio.png  needs probes with batch_lambda_max_ratio/B<b>: E[lambda_max(H_B)] / lambda_max(H) against
  the probe batch size, the fit 1 + c (1/B - 1/N) (spectra.fit_batch_ratio) and the value 1. More than
  MAX_LINES trained points are pooled into one line.
- lr_max_vs_B.png  needs train runs where, for one optimizer, 2 batch sizes each have >= MIN_LRS learning rates
  and a stable lr below a diverged one (a bracketed lr_max): the largest stable lr (stability.largest_stable_lr)
  against B per optimizer, a bar up to the first unstable lr, the fitted power law and the reference slope
  (1 SGD, 1/2 Adam). lr_max.csv and lr_max_fits.csv.
- spectral_density.png  needs probes with a spectrum/density.csv: one curve per probed trial, log density axis
  down to DENSITY_FLOOR of the largest value (smaller densities are not drawn).
- wu_su.png  needs probes of SGD runs with sharpness and hessian_trace: lr ((1 - p) lambda_max + p trace) with
  N = P (stability.wu_su) against B (or lr when B is fixed), and the bound 2. wu_su.csv.
- layer_sensitivity.png  needs probes with layer_trace/<param> or layer_lambda_max/<param>: the layers ranked by
  trace (sensitivity.layer_sensitivity), trace with its standard error and lambda_max. layers.csv.
probes.csv holds one row per probed trial (probes.probe_frame) with its params, metrics and wu_su value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from sgdlab.analysis import plots
from sgdlab.analysis.frames import aggregate, grid_axes, key_columns, swept_columns
from sgdlab.analysis.probes import batch_table, layer_table
from sgdlab.analysis.sensitivity import layer_sensitivity
from sgdlab.analysis.spectra import DENSITY_FLOOR, fit_batch_ratio
from sgdlab.analysis.stability import (EOS_TAIL, REFERENCE_TEXT, WU_SU_BOUND, eos_table, largest_stable_lr,
                                       reference_slope, stable_lr_fit, trajectory_frame, wu_su)

MAX_LINES = 8
INSIDE_LEGEND = 5  # legend entries drawn inside the axes; more go to the right of them
LEGEND_WIDTH = 1.8  # inches added for a legend outside
MIN_LRS = 3  # learning rates per (optimizer, B) for a largest stable lr
MAX_ROWS = 30  # table rows written into summary.md (the CSVs hold all)
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}
Files = list[tuple[Path, str]]  # path, caption


# --- helpers -------------------------------------------------------------------------------------------------

def _line_keys(table: pd.DataFrame, axes: list[str]) -> list[str]:
    """Key columns of the params that vary besides `axes` and seed: what tells the lines of a figure apart.
    Curvature is read against lr and B, so T = lr / (B width) is never a key when lr varies."""
    candidates = [c for c in swept_columns(table) if c not in axes]
    if "lr" in candidates or "lr" in axes:
        candidates = [c for c in candidates if c != "T"]
    given = [c for c in [*axes, "seed"] if c in table]
    return key_columns(table, candidates, given=given) if candidates else []


def _lines(table: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(name, part) per value combination of `keys`; one unnamed line without keys."""
    if not keys:
        return [("", table)]
    out = []
    for values, part in table.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        out.append((", ".join(f"{k}={plots.number(v)}" for k, v in zip(keys, values)), part))
    return out


def _pm(mean: float, se: float, digits: int = 3) -> str:
    """'1.83 ± 0.05', or '1.83' without a standard error."""
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}g}" + (f" ± {se:.2g}" if np.isfinite(se) else "")


def _log_if_wide(values, decades: float = 1.0) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "log" if len(v) and v.min() > 0 and v.max() / v.min() >= 10 ** decades else "linear"


def _outside(n_entries: int) -> bool:
    return n_entries > INSIDE_LEGEND


def _figure(n_entries: int):
    """One panel, widened for a legend outside the axes when it has more than INSIDE_LEGEND entries."""
    return plots.new_figure(extra_width=LEGEND_WIDTH if _outside(n_entries) else 0.0)


def _legend(ax: Axes, n_entries: int, handles: list | None = None) -> None:
    kwargs = {"handles": handles} if handles else {}
    if _outside(n_entries):
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kwargs)
    elif n_entries:
        ax.legend(**kwargs)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[:MAX_ROWS]]
    return lines + ([f"| ... {len(rows) - MAX_ROWS} more rows in the CSV |" + " |" * (len(header) - 1)]
                    if len(rows) > MAX_ROWS else [])


def _x_axis_B(ax: Axes, values, label: str = "batch size B") -> None:
    values = sorted({float(v) for v in values if np.isfinite(v) and v > 0})
    ax.set_xscale("log", base=2)
    if values:
        plots.grid_ticks(ax.xaxis, values, 2)
    ax.set_xlabel(label)


# --- sharpness along training ----------------------------------------------------------------------------------

def sharpness_trajectories(frame: pd.DataFrame, histories: dict, out_dir: Path) -> tuple[list[str], Files, Files]:
    traj = trajectory_frame(frame, histories, "sharpness")
    traj = traj[np.isfinite(traj["lr"].astype(float)) & (traj["lr"].astype(float) > 0)] if len(traj) else traj
    if traj.empty:
        return [], [], []
    runs = eos_table(traj)
    loss = trajectory_frame(frame, histories, "train_loss")
    keys = _line_keys(runs, ["lr"])
    colour = {name: f"C{i % 10}" for i, (name, _) in enumerate(_lines(runs, keys))}
    run_colour = {r: colour[name] for name, part in _lines(runs, keys) for r in part["run_id"]}
    run_name = {r: name for name, part in _lines(runs, keys) for r in part["run_id"]}
    lrs = sorted(runs["lr"].unique())
    ncols = min(len(lrs), 4)
    blocks = math.ceil(len(lrs) / ncols)
    per_block = 2 if len(loss) else 1
    with plots.styled():
        fig, axes = plots.new_grid(blocks * per_block, ncols, sharex="col",
                                   extra_width=LEGEND_WIDTH if _outside(len(colour) + 1) else 0.0)
        for ax in axes.flat:
            ax.set_visible(False)
        for i, lr in enumerate(lrs):
            row, col = divmod(i, ncols)
            ax = axes[row * per_block + per_block - 1, col]
            ax.set_visible(True)
            threshold = 2 / lr
            here = traj[traj["lr"] == lr]
            ok = here[here["outcome"] != "diverged"]["value"]
            top = 1.25 * max(threshold, np.nanmax(ok) if len(ok) and np.isfinite(ok).any() else threshold)
            labelled = set()
            parts = dict(list(here.groupby("run_id", sort=False)))
            for run_id in (r for r in run_name if r in parts):  # in the order of the lines
                part, name = parts[run_id], run_name[run_id]
                diverged = part["outcome"].iloc[0] == "diverged"
                ax.plot(part["step"], part["value"], ":" if diverged else "-", color=run_colour[run_id], lw=1.2,
                        marker=".", ms=3, label=name if name and name not in labelled else None)
                labelled.add(name)
            ax.axhline(threshold, color="black", ls="--", lw=1, label="2/lr")
            bottom = min(0.0, float(np.nanmin(here["value"]))) if np.isfinite(here["value"]).any() else 0.0
            ax.set_ylim(bottom, top)
            ax.set(title="" if per_block == 2 else f"lr = {plots.number(lr)}", xlabel="step",
                   ylabel=plots.label("sharpness"))
            if _outside(len(labelled) + 1):
                _legend(ax, len(labelled) + 1)
            else:
                ax.legend(loc="best")
            if per_block == 2:
                lax = axes[row * per_block, col]
                lax.set_visible(True)
                for run_id, part in loss[loss["lr"] == lr].groupby("run_id", sort=False):
                    finite = part[(part["value"] > 0) & (part["value"] < 1e300)]  # log axis; inf and NaN out
                    diverged = part["outcome"].iloc[0] == "diverged"
                    lax.plot(finite["step"], finite["value"], ":" if diverged else "-",
                             color=run_colour.get(run_id, "0.5"), lw=1.2, marker=".", ms=2)
                lax.set(yscale="log", title=f"lr = {plots.number(lr)}", ylabel=plots.label("train_loss"))
        fig.suptitle("Sharpness along training against 2/lr (edge of stability); dotted: diverged runs")
        path = plots.save(fig, out_dir / "sharpness_trajectories.png")
    csv = out_dir / "trajectories.csv"
    runs.to_csv(csv, index=False)
    lines = ["", f"Sharpness along training ({len(runs)} runs with a sharpness history): eos_ratio = (lr/2) x the "
                 f"mean sharpness over the last {EOS_TAIL:.0%} of the recorded steps; 1 = at the edge of stability "
                 "2/lr, below 1 = flatter (seed mean ± s.e., diverged runs left out).", ""]
    rows = []
    ok = runs[runs["outcome"] != "diverged"]
    for values, part in ok.groupby(["lr", *keys], dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        r = part["eos_ratio"].astype(float)
        rows.append([*(plots.number(v) for v in values), str(len(part)),
                     _pm(part["final_sharpness"].mean(), part["final_sharpness"].std(ddof=1) / np.sqrt(len(part))),
                     f"{2 / values[0]:.3g}", _pm(r.mean(), r.std(ddof=1) / np.sqrt(r.notna().sum()))])
    lines += _table(["lr", *keys, "runs", "final sharpness", "2/lr", "eos_ratio"], rows)
    return lines, [(path, "sharpness against step, one panel per lr, with 2/lr (edge of stability)")], [
        (csv, "per run with a sharpness history: final sharpness, 2/lr, eos_ratio")]


# --- end-of-training lambda_max against B ----------------------------------------------------------------------

def sharpness_vs_batch(frame: pd.DataFrame, probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    table = frame[frame["status"] == "finished"].copy()
    if table.empty:
        return [], [], []
    table["lambda_max"] = pd.to_numeric(table["sharpness"], errors="coerce") if "sharpness" in table else np.nan
    table["source"] = np.where(np.isfinite(table["lambda_max"]), "trajectory", "")
    if len(probes) and "sharpness" in probes:
        measured = probes.set_index("trial_id")["sharpness"].astype(float)
        from_probe = table["trial_id"].map(measured)
        use = np.isfinite(from_probe.astype(float))
        table.loc[use, "lambda_max"] = from_probe[use]
        table.loc[use, "source"] = "probe"
    table = table[np.isfinite(table["lambda_max"]) & (table["B"] > 0)]
    if table["B"].nunique() < 2:
        return [], [], []
    keys = _line_keys(table, ["B"])
    cells = aggregate(table, by=["B", *keys], metrics=["lambda_max"])
    cells = cells[cells["lambda_max_n"] > 0]
    with plots.styled():
        fig, (ax,) = _figure(len(_lines(cells, keys)))
        n_lines = 0
        for i, (name, part) in enumerate(_lines(cells, keys)):
            part = part.sort_values("B")
            ax.errorbar(part["B"], part["lambda_max_mean"], yerr=part["lambda_max_se"].fillna(0), fmt="o-",
                        color=f"C{i % 10}", label=name or "lambda_max")
            lr = _one_lr(table, keys, part)
            if lr:
                ax.axhline(2 / lr, color=f"C{i % 10}", ls=":", lw=1)
            n_lines += 1
        ax.set_yscale(_log_if_wide(cells["lambda_max_mean"]))
        _x_axis_B(ax, cells["B"])
        ax.set(ylabel=plots.label("lambda_max"), title="end-of-training lambda_max (dotted: 2/lr)")
        _legend(ax, n_lines)
        path = plots.save(fig, out_dir / "lambda_max_vs_B.png")
    csv = out_dir / "lambda_max_vs_B.csv"
    cells.to_csv(csv, index=False)
    counts = table.loc[table["outcome"] != "diverged", "source"].value_counts()
    lines = ["", f"End-of-training lambda_max against B ({counts.get('probe', 0)} trials from their probe, "
                 f"{counts.get('trajectory', 0)} from the last point of their sharpness trajectory; diverged trials "
                 "left out; seed mean ± s.e.):",
             ""]
    rows = [[plots.number(r["B"]), *(plots.number(r[k]) for k in keys),
             _pm(r["lambda_max_mean"], r["lambda_max_se"]), str(int(r["lambda_max_n"]))] for _, r in cells.iterrows()]
    lines += _table(["B", *keys, "lambda_max", "n"], rows)
    return lines, [(path, "end-of-training lambda_max against B, mean ± s.e. over seeds, 2/lr dotted")], [
        (csv, "end-of-training lambda_max per B (and swept value), over seeds")]


def _one_lr(table: pd.DataFrame, keys: list[str], cells: pd.DataFrame) -> float | None:
    """The lr of a line when all its trials share one (lr is a key, or fixed across the sweep)."""
    if "lr" in keys:
        return float(cells["lr"].iloc[0])
    lrs = table["lr"].dropna().unique() if "lr" in table else []
    return float(lrs[0]) if len(lrs) == 1 and lrs[0] > 0 else None


# --- mini-batch excess -----------------------------------------------------------------------------------------

def batch_ratio(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    long = batch_table(probes, "batch_lambda_max_ratio") if len(probes) else pd.DataFrame()
    if long.empty:
        return [], [], []
    long = long[long["outcome"] != "diverged"]
    if long.empty:
        return [], [], []
    keys = _line_keys(long, [])
    if len(_lines(long, keys)) > MAX_LINES:
        keys = []
    rows, cells, lines = [], [], ["", "E[lambda_max(H_B)] / lambda_max(H) at the trained points (mini-batches of B "
                                      "of the N probe examples; mean ± s.e. over runs) and the least-squares fit "
                                      "1 + c (1/B - 1/N):", ""]
    with plots.styled():
        fig, (ax,) = _figure(len(_lines(long, keys)) + 2)
        handles = []
        for i, (name, part) in enumerate(_lines(long, keys)):
            g = part.groupby("b")["value"]
            agg = pd.DataFrame({"mean": g.mean(), "se": g.std(ddof=1) / np.sqrt(g.count()), "n": g.count()})
            fit = fit_batch_ratio(part["b"], part["N_probe"], part["value"])
            N = float(np.nanmedian(part["N_probe"].astype(float)))
            colour = f"C{i % 10}"
            label = (name or "measured") + (f": c = {fit.c:.3g}" if fit else "")
            handles.append(ax.errorbar(agg.index, agg["mean"], yerr=agg["se"].fillna(0), fmt="o", color=colour,
                                       label=label))
            if fit is not None and np.isfinite(N):
                grid = np.geomspace(agg.index.min(), max(N, agg.index.max()), 60)
                ax.plot(grid, fit(grid, N), "--", color=colour)
            cells.append(agg.reset_index().assign(line=name, N=N, c=fit.c if fit else np.nan,
                                                  c_se=fit.stderr if fit else np.nan))
            rows.append([name or "all", ", ".join(f"B={plots.number(b)}: {_pm(m, s)}" for b, m, s in
                                                  zip(agg.index, agg["mean"], agg["se"])),
                         str(part["trial_id"].nunique()), plots.number(N),
                         fit.describe() if fit else "not fitted (no B < N)"])
        handles.append(Line2D([], [], ls="--", color="0.4", label="fit 1 + c (1/B - 1/N)"))
        handles.append(ax.axhline(1.0, color="black", ls=":", lw=1, label="1 (full batch)"))
        _x_axis_B(ax, long["b"], "probe batch size B")
        ax.set(ylabel="E[lambda_max(H_B)] / lambda_max(H)", title="mini-batch vs full top eigenvalue")
        _legend(ax, len(handles), handles)
        path = plots.save(fig, out_dir / "batch_ratio.png")
    csv = out_dir / "batch_ratio.csv"
    pd.concat(cells, ignore_index=True).rename(columns={"b": "B_probe"}).to_csv(csv, index=False)
    lines += _table(["trained point", "ratio by B", "runs", "N", "fit"], rows)
    return lines, [(path, "E[lambda_max(H_B)] / lambda_max(H) against the probe batch size, fit and 1")], [
        (csv, "mini-batch / full top-eigenvalue ratio per probe batch size, with the fitted c")]


# --- largest stable learning rate ------------------------------------------------------------------------------

def _optimizer_text(name) -> str:
    return OPTIMIZER_NAMES.get(str(name).lower(), str(name))


def stable_lr(frame: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    if not {"lr", "B", "optimizer"} <= set(frame.columns) or frame.empty:
        return [], [], []
    placed = frame[(pd.to_numeric(frame["lr"], errors="coerce") > 0) & (pd.to_numeric(frame["B"], errors="coerce") > 0)]
    if placed["B"].nunique() < 2 or not (placed["outcome"] == "diverged").any():
        return [], [], []
    others = [c for c in swept_columns(placed) if c not in ("lr", "T", "B", "optimizer", "seed")]
    extras = key_columns(placed, others, given=["optimizer", "B", "lr", "seed"]) if others else []
    by = ["optimizer", *extras, "B"]
    table = largest_stable_lr(placed, by)
    bracketed = table[(table["n_lr"] >= MIN_LRS) & np.isfinite(table["lr_max"]) & ~table["censored"].astype(bool)]
    if bracketed.empty or bracketed.groupby(["optimizer", *extras], dropna=False)["B"].nunique().max() < 2:
        if {"lr", "B"} <= set(grid_axes(placed)):
            return ["", f"- Largest stable lr against B: not drawn (needs, for one optimizer, 2 batch sizes with "
                        f"at least {MIN_LRS} learning rates and a stable lr below a diverged one)."], [], []
        return [], [], []
    sentences, fit_rows = [], []
    with plots.styled():
        fig, (ax,) = plots.new_figure(extra_width=LEGEND_WIDTH)
        handles = []
        for i, (name, part) in enumerate(_lines(table, ["optimizer", *extras])):
            colour, part = f"C{i % 10}", part.sort_values("B")
            label = ", ".join([_optimizer_text(part["optimizer"].iloc[0]), *name.split(", ")[1:]])
            known = part[np.isfinite(part["lr_max"].astype(float))]
            bounded = known[~known["censored"].astype(bool)]
            censored = known[known["censored"].astype(bool)]
            upper = (bounded["lr_unstable"] - bounded["lr_max"]).to_numpy(dtype=float)
            handles.append(ax.errorbar(bounded["B"], bounded["lr_max"], yerr=[np.zeros_like(upper), upper], fmt="o",
                                       color=colour, label=label, capsize=2))
            if len(censored):
                ax.plot(censored["B"], censored["lr_max"], "^", mfc="none", color=colour)
            fit, ref = stable_lr_fit(part), reference_slope(part["optimizer"].iloc[0])
            if fit is not None:
                grid = np.geomspace(bounded["B"].min(), bounded["B"].max(), 50)
                handles += ax.plot(grid, fit(grid), "--", color=colour, label=f"fit {fit.exponent_text()}")
                if ref is not None:
                    u, v = np.log(bounded["B"].astype(float)), np.log(bounded["lr_max"].astype(float))
                    handles += ax.plot(grid, np.exp(v.mean() + ref * (np.log(grid) - u.mean())), ":", color=colour,
                                       lw=1.2, label=f"reference slope {REFERENCE_TEXT.get(ref, f'{ref:g}')}")
                error = f" ± {fit.stderr:.2f}" if np.isfinite(fit.stderr) else " (no error bar: 2 points)"
                ref_text = f" (reference {REFERENCE_TEXT.get(ref, f'{ref:g}')})" if ref is not None else ""
                sentences.append(f"~ B^{fit.exponent:.2f}{error} for {label}{ref_text}")
            fit_rows.append({"line": label, "exponent": fit.exponent if fit else np.nan,
                             "exponent_se": fit.stderr if fit else np.nan,
                             "prefactor": fit.prefactor if fit else np.nan,
                             "n_points": fit.n if fit else 0, "reference": ref if ref is not None else np.nan})
        _x_axis_B(ax, table["B"])
        ax.set(yscale="log", ylabel=plots.label("lr_max"),
               title="largest stable lr\n(bar: up to the first unstable lr; ^: lower bound)")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        path = plots.save(fig, out_dir / "lr_max_vs_B.png")
    csv = out_dir / "lr_max.csv"
    table.to_csv(csv, index=False)
    fits_csv = out_dir / "lr_max_fits.csv"
    pd.DataFrame(fit_rows).to_csv(fits_csv, index=False)
    lines = ["", "Largest stable learning rate: an lr is stable when every seed at it finished without diverging; "
                 "lr_max is the largest stable lr below the smallest lr at which a seed diverged (grid lrs with a "
                 "failed or unfinished trial and no divergence are skipped; where no lr diverged, the largest is "
                 "only a lower bound and is left out of the fit).", ""]
    lines.append("- largest stable lr " + ", ".join(sentences) + "." if sentences
                 else "- largest stable lr ~ B^b: not fitted (fewer than 2 batch sizes with a bracketed lr_max).")
    lines.append("")
    rows = [[*(_optimizer_text(r[c]) if c == "optimizer" else plots.number(r[c]) for c in by),
             plots.number(r["lr_max"]) + (" (lower bound)" if r["censored"] else ""),
             plots.number(r["lr_unstable"]) if np.isfinite(r["lr_unstable"]) else "-",
             f"{r['n_stable']}/{r['n_unstable']}/{r['n_lr']}"] for _, r in table.iterrows()]
    lines += _table([*by, "lr_max", "first unstable lr", "lrs stable/unstable/grid"], rows)
    return lines, [(path, "largest stable lr against B per optimizer, fitted slopes and reference slopes")], [
        (csv, "largest stable lr per optimizer and B (criterion in summary.md)"),
        (fits_csv, "fitted exponents of lr_max ~ B^b per optimizer, with the reference")]


# --- spectral densities ----------------------------------------------------------------------------------------

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
    keys = _line_keys(drawn, [])
    if not keys and len(drawn) > 1:
        keys = ["seed"] if drawn["seed"].nunique() == len(drawn) else []
    floor = DENSITY_FLOOR * max(float(np.nanmax(densities[r]["density"])) for r in chosen.values())
    with plots.styled():
        fig, (ax,) = _figure(len(_lines(drawn, keys)))
        n = 0
        for i, (name, part) in enumerate(_lines(drawn, keys)):
            for j, trial in enumerate(part["trial_id"]):
                table = densities[chosen[trial]]
                density = table["density"].astype(float)
                ax.plot(table["eigenvalue"], density.where(density >= floor), color=f"C{i % 10}",
                        lw=1, alpha=0.85, label=(name or "density") if j == 0 else None)
            n += 1
        ax.set(yscale="log", xlabel="eigenvalue of H", ylabel="spectral density (SLQ)",
               title="Hessian spectral density (SLQ)")
        ax.set_ylim(bottom=floor)
        _legend(ax, n)
        path = plots.save(fig, out_dir / "spectral_density.png")
    lines = ["", f"- Spectral densities (stochastic Lanczos quadrature) of {len(drawn)} probed trials: "
                 "spectral_density.png (log density axis)."]
    return lines, [(path, "Hessian spectral densities (SLQ), one curve per probed trial")], []


# --- Wu & Su ---------------------------------------------------------------------------------------------------

def with_wu_su(probes: pd.DataFrame) -> pd.DataFrame:
    """The probe frame with a column wu_su for SGD trials with sharpness and hessian_trace (N = P); NaN else."""
    needed = {"sharpness", "hessian_trace", "lr", "B", "P", "optimizer"}
    out = probes.copy()
    if not needed <= set(out.columns) or out.empty:
        return out
    sgd = out["optimizer"].astype(str).str.lower() == "sgd"
    value = wu_su(out["lr"], out["sharpness"], out["hessian_trace"], out["B"], out["P"])
    out["wu_su"] = np.where(sgd, value, np.nan)
    return out


def wu_su_check(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    if "wu_su" not in probes:
        return [], [], []
    table = probes[np.isfinite(probes["wu_su"].astype(float))]
    if table.empty:
        return [], [], []
    x = "B" if table["B"].nunique() >= 2 or table["lr"].nunique() < 2 else "lr"
    keys = _line_keys(table, [x])
    cells = aggregate(table, by=[x, *keys], metrics=["wu_su"])
    cells = cells[cells["wu_su_n"] > 0]
    ok = table[table["outcome"] != "diverged"]
    with plots.styled():
        fig, (ax,) = _figure(len(_lines(cells, keys)) + 2)
        for i, (name, part) in enumerate(_lines(cells, keys)):
            part = part.sort_values(x)
            ax.errorbar(part[x], part["wu_su_mean"], yerr=part["wu_su_se"].fillna(0), fmt="o-", color=f"C{i % 10}",
                        label=name or "SGD trials")
        ax.axhline(WU_SU_BOUND, color="black", ls="--", lw=1, label="bound 2")
        ax.axhspan(WU_SU_BOUND, max(WU_SU_BOUND * 1.5, float(np.nanmax(cells["wu_su_mean"])) * 1.2), color="red",
                   alpha=0.07, lw=0, label="linearly unstable")
        if x == "B":
            _x_axis_B(ax, cells["B"])
        else:
            ax.set(xscale="log", xlabel=plots.label("lr"))
            plots.grid_ticks(ax.xaxis, cells["lr"].unique(), 10)
        ax.set(yscale=_log_if_wide([*cells["wu_su_mean"], WU_SU_BOUND], 1.5),
               ylabel="lr ((1-p) lambda_max + p tr H)", title="Wu & Su: SGD linearly stable below 2")
        _legend(ax, len(_lines(cells, keys)) + 2)
        path = plots.save(fig, out_dir / "wu_su.png")
    csv = out_dir / "wu_su.csv"
    cells.to_csv(csv, index=False)
    under = int((ok["wu_su"] <= WU_SU_BOUND).sum())
    subset = ""
    if "N_probe" in table and (table["N_probe"].astype(float) < table["P"].astype(float)).any():
        subset = " (lambda_max and trace are of the Hessian over the probe data, fewer points than P)"
    lines = ["", f"Wu & Su linear stability of SGD at the end of training: q = lr ((1 - p) lambda_max + p trace(H)), "
                 f"p = (N - B) / (B (N - 1)), N = P{subset}; linearly stable when q <= 2.", "",
             f"- {under} of the {len(ok)} probed SGD trials (diverged ones left out) are under 2; q ranges "
             f"{ok['wu_su'].min():.3g} to {ok['wu_su'].max():.3g}." if len(ok) else
             "- every probed SGD trial diverged.", ""]
    rows = [[plots.number(r[x]), *(plots.number(r[k]) for k in keys), _pm(r["wu_su_mean"], r["wu_su_se"]),
             str(int(r["wu_su_n"]))] for _, r in cells.iterrows()]
    lines += _table([x, *keys, "q", "n"], rows)
    return lines, [(path, "Wu & Su stability quantity of SGD trials against the bound 2")], [
        (csv, "Wu & Su quantity per swept point, over seeds")]


# --- per-layer sensitivity -------------------------------------------------------------------------------------

def layer_sensitivities(probes: pd.DataFrame, out_dir: Path) -> tuple[list[str], Files, Files]:
    layers = layer_table(probes) if len(probes) else pd.DataFrame()
    if layers.empty:
        return [], [], []
    table = layer_sensitivity(layers)
    if table.empty:
        return [], [], []
    order = table.iloc[::-1]  # most sensitive on top
    y = np.arange(len(order))
    with plots.styled():
        fig, axes = plots.new_grid(1, 2, sharey=True, extra_width=1.0, panel_height=max(2.4, 0.6 + 0.28 * len(order)))
        ax, bx = axes[0]
        ax.barh(y, order["trace"].fillna(0), xerr=order["trace_se"].fillna(0), color="C0", capsize=2)
        ax.set_yticks(y, order["layer"])
        ax.set(xlabel="trace of the layer's Hessian block", title="HAWQ-V2: trace (± s.e.)")
        bx.barh(y, order["lambda_max"].fillna(0), color="C1")
        bx.set(xlabel="top eigenvalue of the block", title="HAWQ: lambda_max")
        for axis, column in ((ax, "trace"), (bx, "lambda_max")):
            axis.set_xscale(_log_if_wide(order[column], 2))
        fig.suptitle(f"Per-layer sensitivity, ranked by trace ({int(table['n'].max())} probed trials pooled)")
        path = plots.save(fig, out_dir / "layer_sensitivity.png")
    csv = out_dir / "layers.csv"
    table.to_csv(csv, index=False)
    lines = ["", "Per-layer Hessian sensitivity (HAWQ top eigenvalue, HAWQ-V2 trace) pooled over the probed trials, "
                 "ranked by trace (s.e.: over trials, or the Hutchinson s.e. of a single trial):", ""]
    rows = [[str(r["rank"]), r["layer"], _pm(r["trace"], r["trace_se"]), _pm(r["lambda_max"], np.nan), str(r["n"])]
            for _, r in table.iterrows()]
    lines += _table(["rank", "layer", "trace", "lambda_max", "trials"], rows)
    return lines, [(path, "per-layer trace (± s.e.) and top eigenvalue, layers ranked by trace")], [
        (csv, "per-layer trace, standard error and top eigenvalue, ranked")]


# --- all of it -------------------------------------------------------------------------------------------------

def curvature_sections(frame: pd.DataFrame, probes: pd.DataFrame, histories: dict, densities: dict,
                       out_dir: Path) -> tuple[list[str], Files, Files]:
    """(markdown lines, figures, tables) of every curvature figure the records allow (module docstring)."""
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
                    lambda: stable_lr(frame, out_dir),
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
