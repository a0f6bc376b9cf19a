"""A sweep's summary figures: success over kappa x tau per model, and success and mean L_flow
against each swept option."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from stadv import plots
from stadv_sweeps.engine.tables import grid_table, label, success_column, swept_columns


def figures(df: pd.DataFrame, base: Mapping[str, Any]) -> dict[str, Figure]:
    """Per model a heat map of success over kappa x tau (when both are swept), and per swept
    option a plot of success and mean L_flow against its values (one line per model)."""
    out: dict[str, Figure] = {}
    swept = swept_columns(df, base)
    succ = success_column(df)
    if "kappa" in swept and "tau" in swept:
        others = [k for k in swept if k not in ("kappa", "tau")]
        note = f" (mean over {', '.join(others)})" if others else ""
        for model in sorted(df["model"].unique()):
            t = grid_table(df, model, "kappa", "tau")
            t = t[sorted(t.columns, reverse=True)]
            out[f"heatmap_kappa_tau_{model}.png"] = plots.heatmap(
                t.values.tolist(),
                [label(v) for v in t.index],
                [label(v) for v in t.columns],
                title=f"model {model}: {succ.replace('_', ' ')}{note}",
                xlabel="tau",
                ylabel="kappa",
            )
    for p in swept:
        fig = Figure(figsize=(10, 4))
        ax_s, ax_f = fig.subplots(1, 2)
        values = sorted(
            df[p].unique(),
            key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)),
        )
        xs = list(range(len(values)))
        for model in sorted(df["model"].unique()):
            here = df[df["model"] == model]
            g = here.groupby(p)[[succ, "mean_flow_loss"]].mean()
            ys = [g[succ].get(v, math.nan) for v in values]
            fs = [g["mean_flow_loss"].get(v, math.nan) for v in values]
            ax_s.plot(xs, ys, marker="o", label=f"model {model}")
            ax_f.plot(xs, fs, marker="o", label=f"model {model}")
        for ax, what in ((ax_s, succ.replace("_", " ")), (ax_f, "mean L_flow")):
            ax.set_xticks(xs, [label(v) for v in values], rotation=30)
            ax.set_xlabel(p)
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax_s.set_ylim(-0.02, 1.02)
        flows = df["mean_flow_loss"].dropna()
        if len(flows) and flows.min() > 0 and flows.max() / flows.min() > 100:
            ax_f.set_yscale("log")
        fig.suptitle(f"{p} (mean over the other swept options; base {p}={label(base.get(p))})")
        out[f"vs_{p}.png"] = fig
    return out
