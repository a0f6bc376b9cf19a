"""A sweep's trials as tables: the trials, the best setting, the paper beside ours, and each
swept choice's effect on success (paired trials), from :func:`~stadv_sweeps.engine.runs.runs_frame`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from stadv.models import PAPER_TABLE1_SUCCESS

SUCCESS = "targeted_success_rate"
#: Options that never change what a trial measures (only how it is computed).
NEUTRAL_OPTIONS = ("batch_size", "batching", "check")
TABLE_METRICS = (
    SUCCESS,
    "targeted_success_ci_low",
    "targeted_success_ci_high",
    "untargeted_success_rate",
    "mean_flow_loss",
    "median_flow_loss",
    "mean_l2",
    "mean_linf",
    "mean_iterations",
    "seconds",
    "attacks_per_second",
)


def label(v: Any) -> str:
    """How a value is shown and compared across trials (``0.05``, ``eq5``, ``True``)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
def option_columns(df: pd.DataFrame, base: Mapping[str, Any]) -> list[str]:
    """Attack options present as columns (the base setting's keys)."""
    return [k for k in base if k in df.columns and k not in NEUTRAL_OPTIONS]


def swept_columns(df: pd.DataFrame, base: Mapping[str, Any]) -> list[str]:
    """Options that take more than one value across the trials."""
    return [k for k in option_columns(df, base) if df[k].astype(str).nunique() > 1]


def success_column(df: pd.DataFrame) -> str:
    return (
        SUCCESS
        if SUCCESS in df.columns and df[SUCCESS].notna().any()
        else "untargeted_success_rate"
    )


def trials_table(df: pd.DataFrame, base: Mapping[str, Any]) -> pd.DataFrame:
    cols = ["model", *swept_columns(df, base), *(m for m in TABLE_METRICS if m in df.columns)]
    return df[cols].reset_index(drop=True)


def is_base(df: pd.DataFrame, base: Mapping[str, Any]) -> pd.Series:
    """Rows whose swept options all equal the base setting."""
    mask = pd.Series(True, index=df.index)
    for k in swept_columns(df, base):
        mask &= df[k].map(label) == label(base[k])
    return mask


def best_per_model(df: pd.DataFrame, base: Mapping[str, Any]) -> pd.DataFrame:
    """Per model, the trial with the highest success (ties: the smaller mean L_flow)."""
    succ = success_column(df)
    ordered = df.sort_values([succ, "mean_flow_loss"], ascending=[False, True])
    best = ordered.groupby("model", sort=True).head(1).sort_values("model")
    cols = ["model", *swept_columns(df, base), succ, "mean_flow_loss", "mean_l2"]
    return best[[c for c in cols if c in best.columns]].reset_index(drop=True)


def paper_table(df: pd.DataFrame, base: Mapping[str, Any]) -> pd.DataFrame:
    """The paper's Table 1 success beside ours at the base setting and our best trial."""
    succ = success_column(df)
    at_base = df[is_base(df, base)]
    rows = []
    for model in sorted(df["model"].unique()):
        here = df[df["model"] == model]
        b = at_base[at_base["model"] == model]
        rows.append(
            {
                "model": model,
                "paper_success": PAPER_TABLE1_SUCCESS.get(str(model), math.nan),
                "ours_at_base": float(b[succ].iloc[0]) if len(b) else math.nan,
                "ours_best": float(here[succ].max()),
                "images": int(here["n_images"].iloc[0]) if "n_images" in here else -1,
                "targets": str(here["targets"].iloc[0]) if "targets" in here else "",
            }
        )
    return pd.DataFrame(rows)


def effects(df: pd.DataFrame, base: Mapping[str, Any]) -> pd.DataFrame:
    """Each swept choice's effect on success and L_flow, most harmful first.

    For option ``p`` at a value ``v`` other than the base one, every trial with ``p = v`` is
    paired with the trial of the same model that differs only in ``p`` (set to its base
    value); the effect is the mean difference over the pairs. A trial with no such partner
    (a choice that only exists together with another, e.g. ``eq5_scale`` with ``eq5``) is
    compared with the model's base trial instead, labelled with all its non-base options.
    """
    succ = success_column(df)
    swept = swept_columns(df, base)
    rows: list[dict[str, Any]] = []
    if not swept or not len(df):
        return pd.DataFrame(rows)
    key = df[swept].map(label)
    base_str = {k: label(base[k]) for k in swept}
    index = {(m, tuple(key.loc[i])): i for i, m in df["model"].items()}
    paired: set[int] = set()
    for p in swept:
        for v in sorted(key[p].unique()):
            if v == base_str[p]:
                continue
            for model in sorted(df["model"].unique()):
                diffs_s, diffs_f = [], []
                for i in df.index[(key[p] == v) & (df["model"] == model)]:
                    partner_key = tuple(base_str[k] if k == p else key.at[i, k] for k in swept)
                    j = index.get((model, partner_key))
                    if j is None:
                        continue
                    paired.add(i)
                    diffs_s.append(df.at[i, succ] - df.at[j, succ])
                    diffs_f.append(df.at[i, "mean_flow_loss"] - df.at[j, "mean_flow_loss"])
                if diffs_s:
                    rows.append(_effect_row(f"{p}={v}", model, diffs_s, diffs_f))
    base_mask = is_base(df, base)
    base_rows = df[base_mask]
    for i in df.index:
        if i in paired or base_mask[i]:
            continue
        model = df.at[i, "model"]
        ref = base_rows[base_rows["model"] == model]
        if not len(ref):
            continue
        choice = ", ".join(f"{k}={key.at[i, k]}" for k in swept if key.at[i, k] != base_str[k])
        j = ref.index[0]
        ds = [df.at[i, succ] - df.at[j, succ]]
        dflow = [df.at[i, "mean_flow_loss"] - df.at[j, "mean_flow_loss"]]
        rows.append(_effect_row(choice, model, ds, dflow))
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    return out.sort_values(["delta_success", "choice", "model"]).reset_index(drop=True)


def _effect_row(
    choice: str, model: Any, ds: Sequence[float], dflow: Sequence[float]
) -> dict[str, Any]:
    return {
        "choice": choice,
        "model": model,
        "pairs": len(ds),
        "delta_success": float(pd.Series(ds, dtype=float).mean()),
        "delta_mean_flow_loss": float(pd.Series(dflow, dtype=float).mean()),
    }


def ranked_choices(eff: pd.DataFrame) -> pd.DataFrame:
    """Effects averaged over models, most harmful first."""
    if not len(eff):
        return eff
    g = eff.groupby("choice").agg(
        delta_success=("delta_success", "mean"),
        worst_model_delta=("delta_success", "min"),
        delta_mean_flow_loss=("delta_mean_flow_loss", "mean"),
        models=("model", lambda s: " ".join(sorted(map(str, s)))),
    )
    g = g.sort_values("delta_success").reset_index()
    g.insert(0, "rank", range(1, len(g) + 1))
    return g


def grid_table(df: pd.DataFrame, model: str, rows: str, cols: str) -> pd.DataFrame:
    """Mean success of ``model`` over a two-option grid (mean over the other options)."""
    here = df[df["model"] == model]
    return here.pivot_table(index=rows, columns=cols, values=success_column(df), aggfunc="mean")


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (no tabulate dependency)."""
    if not len(df):
        return "_(none)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|")
