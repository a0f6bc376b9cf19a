"""A sweep's summary figures: success over kappa x tau per model, and success (with 95 %
Wilson intervals) and mean L_flow against each swept option."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from stadv import plots
from stadv.metrics import wilson_interval
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
                title=f"model {model}: {succ.replace('_rate', '').replace('_', ' ')}{note}",
                xlabel="tau",
                ylabel="kappa",
                colorbar="success rate",
            )
    for p in swept:
        out[f"vs_{p}.png"] = _versus(df, base, p, succ)
    return out


def _pooled(here: pd.DataFrame, succ: str) -> tuple[float, float, float]:
    """Success over the trials ``here`` pooled (their attacks together) and its 95 % Wilson
    interval: one trial's own interval, several trials' over all their attacks."""
    if not len(here):
        return (math.nan, math.nan, math.nan)
    stem = succ[: -len("_rate")]
    if len(here) == 1 and f"{stem}_ci_low" in here:
        row = here.iloc[0]
        return (float(row[succ]), float(row[f"{stem}_ci_low"]), float(row[f"{stem}_ci_high"]))
    if "attacks" not in here:
        rate = float(here[succ].mean())
        return (rate, math.nan, math.nan)
    n = int(here["attacks"].sum())
    k = int(round(float((here[succ] * here["attacks"]).sum())))
    low, high = wilson_interval(k, n)
    return (k / n if n else math.nan, low, high)


def _versus(df: pd.DataFrame, base: Mapping[str, Any], p: str, succ: str) -> Figure:
    """Success (95 % Wilson intervals as error bars) and mean L_flow against option ``p``,
    one line per model; trials differing in other options are pooled."""
    values = sorted(
        df[p].unique(),
        key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)),
    )
    xs = list(range(len(values)))
    models = sorted(df["model"].unique())
    with plots.style():
        fig = Figure(figsize=(12, 4.8))
        ax_s, ax_f = fig.subplots(1, 2)
        for i, model in enumerate(models):
            here = df[df["model"] == model]
            shift = (i - (len(models) - 1) / 2) * 0.06  # overlapping error bars side by side
            stats = [_pooled(here[here[p].map(label) == label(v)], succ) for v in values]
            ys = [s[0] for s in stats]
            lower = [s[0] - s[1] if s[1] == s[1] else 0.0 for s in stats]
            upper = [s[2] - s[0] if s[2] == s[2] else 0.0 for s in stats]
            ax_s.errorbar(
                [x + shift for x in xs],
                ys,
                yerr=[lower, upper],
                marker="o",
                capsize=4,
                label=f"model {model}",
            )
            g = here.groupby(p)["mean_flow_loss"].mean()
            fs = [g.get(v, math.nan) for v in values]
            ax_f.plot(xs, fs, marker="o", label=f"model {model}")
        what = succ.replace("_rate", "").replace("_", " ")
        for ax, ylabel in ((ax_s, f"{what} (95 % Wilson interval)"), (ax_f, "mean L_flow")):
            ax.set_xticks(xs, [label(v) for v in values], rotation=30 if len(values) > 4 else 0)
            ax.set_xlabel(p)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
            plots.plain_numbers(ax)
        ax_s.set_ylim(-0.02, 1.02)
        flows = df["mean_flow_loss"].dropna()
        if len(flows) and flows.min() > 0 and flows.max() / flows.min() > 100:
            ax_f.set_yscale("log")
        fig.suptitle(
            f"{what} and mean L_flow against {p} (other swept options pooled; "
            f"base {p}={label(base.get(p))})"
        )
        fig.tight_layout()
    return fig
