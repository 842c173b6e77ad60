"""A refinement's brackets (sweep/refine.py): where the criterion turns true along the refined axis, against the
first numeric axis of the combinations (B for lr_max(B), P for T_c(P)), one line per value of the others.

refine_boundary.png: each combination's estimate (the bracket's geometric or arithmetic middle) with a bar from its
lower to its upper end, a power-law fit per line through the located brackets, on log axes where the values are
positive. refine_brackets.csv: the brackets as recorded (lower, upper, estimate, rounds, trials, status).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sgdlab.analysis import plots
from sgdlab.analysis.figure_layout import LEGEND_WIDTH, batch_axis
from sgdlab.analysis.fits import MIN_FIT_POINTS, fit_power_law
from sgdlab.analysis.report_section import Files, Numbers, markdown_table, number_key

LABELS = {"optim.lr": "lr", "optim.temperature": "T", "data.batch_size": "B", "data.n_train": "P",
          "model.alpha": "alpha"}


def refine_section(brackets: pd.DataFrame, axis: str, criterion: str, out_dir: Path,
                   numbers: Numbers) -> tuple[list[str], Files, Files]:
    """(markdown lines, figures, tables) of a refinement's brackets, nothing without brackets; the fitted power
    laws go into `numbers`."""
    if brackets is None or brackets.empty:
        return [], [], []
    csv = out_dir / "refine_brackets.csv"
    brackets.to_csv(csv, index=False)
    keys = [c for c in brackets.columns if c not in ("lower", "upper", "estimate", "rounds", "trials", "added",
                                                     "status")]
    numeric = [k for k in keys if pd.to_numeric(brackets[k], errors="coerce").notna().all()]
    name = LABELS.get(axis, axis)
    lines = ["", f"Refinement of {axis}: each bracket ends where `{criterion}` is false (lower) and where it first "
                 "holds (upper).", ""]
    rows = [[*(str(r[k]) for k in keys), plots.number(r["lower"]) if pd.notna(r["lower"]) else "-",
             plots.number(r["upper"]) if pd.notna(r["upper"]) else "-",
             plots.number(r["estimate"]) if pd.notna(r["estimate"]) else "-", str(r["rounds"]), str(r["trials"]),
             r["status"]] for _, r in brackets.iterrows()]
    lines += markdown_table([*keys, "lower", "upper", name + " estimate", "rounds", "trials", "status"], rows)
    tables = [(csv, f"brackets of the refinement of {axis} (criterion `{criterion}`)")]
    if not numeric:
        return lines, [], tables
    x_key, others = numeric[0], [k for k in keys if k != numeric[0]]
    frame = brackets.assign(x=pd.to_numeric(brackets[x_key]))
    with plots.styled():
        fig, (ax,) = plots.new_figure(extra_width=LEGEND_WIDTH)
        handles = []
        groups = frame.groupby(others, sort=True) if others else [((), frame)]
        for i, (values, part) in enumerate(groups):
            values = values if isinstance(values, tuple) else (values,)
            label = ", ".join(f"{LABELS.get(k, k)}={v}" for k, v in zip(others, values)) or name
            colour, part = f"C{i % 10}", part.sort_values("x")
            located = part[part["status"] == "located"]
            bounded = part[part["lower"].notna() & part["upper"].notna()]
            handles.append(ax.errorbar(bounded["x"], bounded["estimate"],
                                       yerr=[bounded["estimate"] - bounded["lower"],
                                             bounded["upper"] - bounded["estimate"]],
                                       fmt="o", color=colour, capsize=3, label=label))
            if located["x"].nunique() < MIN_FIT_POINTS:
                lines.append(f"- {name}* ~ {LABELS.get(x_key, x_key)}^b for {label}: not computed: "
                             f"{located['x'].nunique()} located values of {x_key} (a fit needs {MIN_FIT_POINTS}).")
            else:
                fit = fit_power_law(located["x"], located["estimate"])
                grid = np.geomspace(located["x"].min(), located["x"].max(), 50)
                handles += ax.plot(grid, fit(grid), "--", color=colour, label=f"fit {fit.exponent_text()}")
                lines.append(f"- {name}* ~ {LABELS.get(x_key, x_key)}^b for {label}: {fit.describe()}")
                numbers.update({number_key(f"{name}_exponent", label): fit.exponent,
                                number_key(f"{name}_exponent_se", label): fit.stderr})
        if (frame["x"] > 0).all() and (frame["lower"].dropna() > 0).all():
            ax.set_yscale("log")
            if x_key == "data.batch_size":
                batch_axis(ax, frame["x"])
            else:
                ax.set_xscale("log")
        ax.set(xlabel=LABELS.get(x_key, x_key), ylabel=f"{name}*",
               title=f"{name}* where `{criterion}` turns true\n(bar: the bracket; --: power-law fit)")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        path = plots.save(fig, out_dir / "refine_boundary.png")
    return lines, [(path, f"refined {axis} against {x_key}, with its brackets")], tables
