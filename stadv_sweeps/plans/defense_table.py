"""The defense sweep's summary: attack success per (model, defense, attack) with its Wilson
95 % interval (:func:`stadv.metrics.wilson_interval`, as each trial logged it), beside each
defended model's clean accuracy on the whole test split.

The only published number we can set beside ours is stAdv's undefended success in the
paper's Table 1 (all 9 targets per image); the paper's defense table could not be checked
here, so none of its numbers appear (see :data:`PAPER_NOTE`).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

from stadv import plots
from stadv.models import PAPER_TABLE1_SUCCESS
from stadv_sweeps.engine.report import write_tables
from stadv_sweeps.engine.tables import SUCCESS, markdown_table, success_column
from stadv_sweeps.plans.defense_spec import ATTACK_LABELS, DEFENSE_LABELS

PAPER_NOTE = (
    "Published numbers: only stAdv's undefended success from the paper's Table 1 (Xiao et al. "
    "2018; all 9 targets per image, tau 0.05) stands beside ours. The paper's defense table "
    "(FGSM, C&W and stAdv against FGSM-, ensemble- and PGD-adversarially trained A, B, C) "
    "could not be checked here and is not reproduced; blur and the denoiser are not in it."
)


def _order(values: pd.Series, known: dict[str, str]) -> pd.Series:
    rank = {k: i for i, k in enumerate(known)}
    return values.map(lambda v: rank.get(str(v), len(rank)))


def success_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial: model, defense, attack, attacks run, success with its 95 %
    interval, the model's clean test accuracy and the paper's number where there is one."""
    succ = success_column(df)
    stem = succ[: -len("_rate")]
    out = pd.DataFrame(
        {
            "model": df["model"].astype(str),
            "defense": df["defense"].astype(str),
            "attack": df["attack"].astype(str),
            "attacks": df["attacks"].astype(int),
            "success": df[succ].astype(float),
            "ci_low": df[f"{stem}_ci_low"].astype(float),
            "ci_high": df[f"{stem}_ci_high"].astype(float),
            "test_accuracy": df["test_accuracy"].astype(float),
        }
    )
    targeted_all = succ == SUCCESS and (df["targets"].astype(str) == "all").all()
    out["paper_success"] = [
        PAPER_TABLE1_SUCCESS.get(m, math.nan)
        if (a, d) == ("stadv", "none") and targeted_all
        else math.nan
        for m, d, a in zip(out["model"], out["defense"], out["attack"], strict=True)
    ]
    rank = out.assign(
        _defense=_order(out["defense"], DEFENSE_LABELS),
        _attack=_order(out["attack"], ATTACK_LABELS),
    )
    rank = rank.sort_values(["model", "_defense", "_attack"])
    return rank.drop(columns=["_defense", "_attack"]).reset_index(drop=True)


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, defense), columns: clean accuracy, then each attack's success [95 % CI]."""
    rows = []
    for (model, defense), g in table.groupby(["model", "defense"], sort=False):
        row: dict[str, Any] = {
            "model": model,
            "defense": DEFENSE_LABELS.get(defense, defense),
            "clean acc": f"{g['test_accuracy'].iloc[0]:.2%}",
        }
        for _, r in g.iterrows():
            cell = f"{r['success']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]"
            if not math.isnan(r["paper_success"]):
                cell += f" (paper {r['paper_success']:.2%})"
            row[ATTACK_LABELS.get(r["attack"], r["attack"])] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def metrics(table: pd.DataFrame) -> dict[str, float]:
    """Parent-run metrics: ``success.<attack>.<defense>.<model>``, ``test_accuracy.<defense>.<model>``."""
    out = {}
    for _, r in table.iterrows():
        out[f"success.{r['attack']}.{r['defense']}.{r['model']}"] = float(r["success"])
        out[f"test_accuracy.{r['defense']}.{r['model']}"] = float(r["test_accuracy"])
    return out


def _heading(df: pd.DataFrame) -> str:
    succ = success_column(df).replace("_", " ")
    images = int(df["n_images"].iloc[0]) if "n_images" in df else -1
    targets = str(df["targets"].iloc[0]) if "targets" in df else ""
    evaluated = df["eval_images"].iloc[0] if "eval_images" in df else "all"
    on = "the whole test split" if evaluated == "all" else f"the first {evaluated:.0f} test images"
    return (
        f"Attack success ({succ}, {images} test images, targets={targets}) with Wilson 95 % "
        f"intervals; clean acc = accuracy of the defended model on {on}:"
    )


def summary_text(df: pd.DataFrame) -> str:
    """What the driver prints at the end."""
    wide = wide_table(success_table(df))
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        return "\n".join([_heading(df), wide.to_string(index=False), "", PAPER_NOTE])


def figures(table: pd.DataFrame) -> dict[str, Figure]:
    """Per attack, a heat map of success over defenses x models."""
    out = {}
    models = sorted(table["model"].unique())
    defenses = [d for d in DEFENSE_LABELS if d in set(table["defense"])]
    for attack in [a for a in ATTACK_LABELS if a in set(table["attack"])]:
        here = table[table["attack"] == attack].set_index(["defense", "model"])["success"]
        values = [[float(here.get((d, m), math.nan)) for m in models] for d in defenses]
        out[f"success_{attack}.png"] = plots.heatmap(
            values,
            [DEFENSE_LABELS[d] for d in defenses],
            models,
            title=f"{ATTACK_LABELS[attack]}: attack success",
            xlabel="model",
            ylabel="defense",
        )
    return out


def report_markdown(df: pd.DataFrame, figure_files: list[str]) -> str:
    table = success_table(df)
    lines = [
        "# Attacks against defenses",
        "",
        _heading(df),
        "",
        markdown_table(wide_table(table)),
        PAPER_NOTE,
        "",
        "## All trials",
        "",
        markdown_table(table),
    ]
    lines += [f"![{Path(f).stem}]({f})\n" for f in figure_files]
    return "\n".join(lines)


def log_summary(client: MlflowClient, parent: Any, df: pd.DataFrame) -> None:
    """Log the tables, heat maps and report on the parent run."""
    table = success_table(df)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_tables(folder, trials=df, defense_table=table)
        names = []
        for name, fig in figures(table).items():
            plots.save_png(fig, folder / "figures" / name)
            names.append(f"figures/{name}")
        (folder / "report.md").write_text(report_markdown(df, names))
        client.log_artifacts(parent.info.run_id, str(folder))
