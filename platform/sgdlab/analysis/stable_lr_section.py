"""The largest stable learning rate against the batch size B, per optimizer.

Needs train runs where, for one optimizer, 2 batch sizes each have >= MIN_LRS learning rates and a stable lr
below an unstable one (a bracketed lr_max). Unstable means: what a refinement of optim.lr located (its criterion,
e.g. the training loss after K steps above its start; stability.refined_stable_lr) when the sweep has one, else a
diverged seed (stability.largest_stable_lr). lr_max_vs_B.png: lr_max against B per optimizer, a bar up to the
first unstable lr, the fitted power law and the reference slope (1 SGD, 1/2 Adam); where the trials measured
E[lambda_max(H_B)] at step 0 (probe.at_start), the prediction 2 / E[lambda_max(H_B)] beside them, with its own
fit; where they measured the gradient noise scale B_noise at step 0 (probe.noise), the fits again over
B <= B_noise / 4, where the linear law of SGD is about (its line on the figure). lr_max.csv, lr_max_fits.csv
and lr_predicted.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import LEGEND_WIDTH, batch_axis
from sgdlab.analysis.figure_lines import line_parts
from sgdlab.analysis.frames import grid_axes, key_columns, swept_columns
from sgdlab.analysis.report_section import Files, Numbers, markdown_table, number_key
from sgdlab.analysis.fits import MIN_FIT_POINTS, fit_power_law
from sgdlab.analysis.stability import (REFERENCE_TEXT, largest_stable_lr, predicted_stable_lr, reference_slope,
                                       refined_stable_lr, stable_lr_fit)

MIN_LRS = 3  # learning rates per (optimizer, B) for a largest stable lr
BRACKET_COLUMNS = {"optim": "optimizer", "optim.name": "optimizer", "data.batch_size": "B"}
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}


def _optimizer_text(name) -> str:
    return OPTIMIZER_NAMES.get(str(name).lower(), str(name))


def noise_regime_edge(predicted: pd.DataFrame) -> float | None:
    """B_noise / 4, the largest B of the regime where a batch's gradient noise dominates its signal, from the
    gradient noise scale measured at step 0 (mean over the batch sizes' trials); None where not measured."""
    known = predicted["B_noise"].dropna() if "B_noise" in predicted else predicted[:0]
    return float(known.mean()) / 4 if len(known) else None


def fit_row(line: str, where: str, fit, reference) -> dict:
    """A row of lr_max_fits.csv: one line's power law over a range of B."""
    return {"line": line, "range": where, "exponent": fit.exponent if fit else np.nan,
            "exponent_se": fit.stderr if fit else np.nan, "prefactor": fit.prefactor if fit else np.nan,
            "n_points": fit.n if fit else 0, "reference": reference if reference is not None else np.nan}


def stable_lr(frame: pd.DataFrame, out_dir: Path, numbers: Numbers,
              brackets: pd.DataFrame | None = None) -> tuple[list[str], Files, Files]:
    """(lines, figure, tables) of lr_max against B; the fitted exponents, each lr_max and the prediction go into
    `numbers`. brackets: a refinement of optim.lr (its brackets define lr_max), or None."""
    if not {"lr", "B", "optimizer"} <= set(frame.columns) or frame.empty:
        return [], [], []
    placed = frame[(pd.to_numeric(frame["lr"], errors="coerce") > 0) & (pd.to_numeric(frame["B"], errors="coerce") > 0)]
    if placed["B"].nunique() < 2 or (brackets is None and not (placed["outcome"] == "diverged").any()):
        return [], [], []
    others = [c for c in swept_columns(placed) if c not in ("lr", "T", "B", "optimizer", "seed")
              and not c.startswith("optim.")]  # one optimizer's own settings (Adam's betas) differ by optimizer
    extras = key_columns(placed, others, given=["optimizer", "B", "lr", "seed"]) if others else []
    by = ["optimizer", *extras, "B"]
    refined = brackets is not None and not extras
    table = refined_stable_lr(brackets, BRACKET_COLUMNS) if refined else largest_stable_lr(placed, by)
    if "optimizer" not in table:  # a refinement of one optimizer: not an axis of its combinations
        table.insert(0, "optimizer", placed["optimizer"].iloc[0])
    predicted = predicted_stable_lr(placed)
    bracketed = table[(table["n_lr"] >= MIN_LRS) & np.isfinite(table["lr_max"]) & ~table["censored"].astype(bool)]
    if bracketed.empty or bracketed.groupby(["optimizer", *extras], dropna=False)["B"].nunique().max() < 2:
        if {"lr", "B"} <= set(grid_axes(placed)):
            return ["", f"- Largest stable lr against B: not drawn (needs, for one optimizer, 2 batch sizes with "
                        f"at least {MIN_LRS} learning rates and a stable lr below a diverged one)."], [], []
        return [], [], []
    sentences, fit_rows = [], []
    noise_edge = noise_regime_edge(predicted)
    with plots.styled():
        fig, (ax,) = plots.new_figure(extra_width=LEGEND_WIDTH)
        handles = []
        for i, (name, part) in enumerate(line_parts(table, ["optimizer", *extras])):
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
                error = f" ± {fit.stderr:.2f}"
                ref_text = f" (reference {REFERENCE_TEXT.get(ref, f'{ref:g}')})" if ref is not None else ""
                sentences.append(f"~ B^{fit.exponent:.2f}{error} for {label}{ref_text}")
                numbers.update({number_key("lr_max_exponent", label): fit.exponent,
                                number_key("lr_max_exponent_se", label): fit.stderr})
            else:
                sentences.append(f"not computed for {label}: {bounded['B'].nunique()} batch sizes with a bracketed "
                                 f"lr_max (a fit needs {MIN_FIT_POINTS})")
            numbers.update({number_key("lr_max", label, f"B {plots.number(r.B)}"): r.lr_max
                            for r in bounded.itertuples()})
            fit_rows.append(fit_row(label, "all B", fit, ref))
            if noise_edge is not None:  # the same fit where the batch noise dominates: B <= B_noise / 4
                regime = stable_lr_fit(part[part["B"].astype(float) <= noise_edge])
                fit_rows.append(fit_row(label, "B <= B_noise / 4", regime, ref))
                if regime is not None:
                    fitted = bounded["B"][bounded["B"].astype(float) <= noise_edge].astype(float)
                    below = np.geomspace(fitted.min(), fitted.max(), 20)  # over the points it fits, no further
                    handles += ax.plot(below, regime(below), "-", color=colour, lw=2, alpha=0.5,
                                       label=f"fit B <= B_noise / 4: {regime.exponent_text()}")
                    sentences.append(f"~ B^{regime.exponent:.2f} ± {regime.stderr:.2f} for {label} over "
                                     f"B <= B_noise / 4 = {plots.number(noise_edge)}")
                    numbers.update({number_key("lr_max_exponent_noise_regime", label): regime.exponent,
                                    number_key("lr_max_exponent_noise_regime_se", label): regime.stderr})
        if len(predicted):
            handles += ax.plot(predicted["B"], predicted["lr_predicted"], "D-", color="k", ms=4, lw=1,
                               label="2 / E[lambda_max(H_B)] at step 0")
            handles.append(ax.axhline(predicted["lr_full_batch"].mean(), color="0.5", ls=":", lw=1,
                                      label="2 / lambda_max(H) at step 0"))
            fit = fit_power_law(predicted["B"], predicted["lr_predicted"]) \
                if predicted["B"].nunique() >= MIN_FIT_POINTS else None
            if fit is not None:
                sentences.append(f"~ B^{fit.exponent:.2f} ± {fit.stderr:.2f} for the prediction 2 / E[lambda_max(H_B)]")
                numbers.update({number_key("lr_predicted_exponent"): fit.exponent,
                                number_key("lr_predicted_exponent_se"): fit.stderr})
            below = predicted[predicted["B"].astype(float) <= noise_edge] if noise_edge is not None else predicted[:0]
            if below["B"].nunique() >= MIN_FIT_POINTS:
                fit = fit_power_law(below["B"], below["lr_predicted"])
                sentences.append(f"~ B^{fit.exponent:.2f} ± {fit.stderr:.2f} for the prediction over B <= B_noise / 4")
                numbers.update({number_key("lr_predicted_exponent_noise_regime"): fit.exponent,
                                number_key("lr_predicted_exponent_noise_regime_se"): fit.stderr})
        if noise_edge is not None:
            handles.append(ax.axvline(noise_edge, color="0.3", ls="-.", lw=1,
                                      label=f"B_noise / 4 at step 0 ({plots.number(noise_edge)})"))
            numbers[number_key("noise_scale_at_start")] = 4 * noise_edge
            numbers.update({number_key("lr_predicted", f"B {plots.number(r.B)}"): r.lr_predicted
                            for r in predicted.itertuples()})
        batch_axis(ax, table["B"])
        ax.set(yscale="log", ylabel=plots.label("lr_max"),
               title="largest stable lr\n(bar: up to the first unstable lr; ^: lower bound)")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        path = plots.save(fig, out_dir / "lr_max_vs_B.png")
    csv = out_dir / "lr_max.csv"
    table.to_csv(csv, index=False)
    fits_csv = out_dir / "lr_max_fits.csv"
    pd.DataFrame(fit_rows).to_csv(fits_csv, index=False)
    tables = [(csv, "largest stable lr per optimizer and B (criterion in summary.md)"),
              (fits_csv, "fitted exponents of lr_max ~ B^b per optimizer and range of B, with the reference")]
    if len(predicted):
        predicted_csv = out_dir / "lr_predicted.csv"
        predicted.to_csv(predicted_csv, index=False)
        tables.append((predicted_csv, "E[lambda_max(H_B)] at step 0 per B (mean ± s.e. over seeds) and the "
                                      "predicted largest stable lr 2 / E[lambda_max(H_B)]"))
    if refined:
        lines = ["", "Largest stable learning rate: lr_max is the lower end of the refinement's bracket (the largest "
                     "lr at which its criterion did not hold, below the smallest at which it did); where no lr met "
                     "it, the largest lr tried is only a lower bound and is left out of the fit.", ""]
    else:
        lines = ["", "Largest stable learning rate: an lr is stable when every seed at it finished without "
                     "diverging; lr_max is the largest stable lr below the smallest lr at which a seed diverged "
                     "(grid lrs with a failed or unfinished trial and no divergence are skipped; where no lr "
                     "diverged, the largest is only a lower bound and is left out of the fit).", ""]
    lines.append("- largest stable lr " + ", ".join(sentences) + "." if sentences
                 else "- largest stable lr ~ B^b: not computed (no line has a bracketed lr_max).")
    lines.append("")
    prediction = dict(zip(predicted["B"], predicted["lr_predicted"]))
    noise = dict(zip(predicted["B"], predicted["B_noise"])) if noise_edge is not None else {}
    rows = [[*(_optimizer_text(r[c]) if c == "optimizer" else plots.number(r[c]) for c in by),
             plots.number(r["lr_max"]) + (" (lower bound)" if r["censored"] else ""),
             plots.number(r["lr_unstable"]) if np.isfinite(r["lr_unstable"]) else "-",
             str(r["n_lr"]) if refined else f"{r['n_stable']}/{r['n_unstable']}/{r['n_lr']}",
             plots.number(prediction[r["B"]]) if r["B"] in prediction else "-",
             *([plots.number(noise[r["B"]]) if r["B"] in noise else "-"] if noise else [])]
            for _, r in table.iterrows()]
    lines += markdown_table([*by, "lr_max", "first unstable lr", "trials" if refined else "lrs stable/unstable/grid",
                             "2 / E[lambda_max(H_B)]", *(["B_noise at step 0"] if noise else [])], rows)
    return lines, [(path, "largest stable lr against B per optimizer, fitted slopes, reference slopes and the "
                          "prediction 2 / E[lambda_max(H_B)]")], tables
