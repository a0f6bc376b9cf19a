"""The defense sweep's summary: attack success per (model, defense, attack) with its Wilson
95 % interval (:func:`stadv.metrics.wilson_interval`, as each trial logged it), beside each
defended model's clean accuracy on the whole test split.

Each trial's success is the one its target protocol measures: targeted success for targeted
trials, untargeted success (the prediction is not the label) for untargeted ones (DeepFool
always; its column says "untargeted" when the others are targeted). A detector's row (the VAE
detector) shows, per attack, ``detect D / adaptive A [95 % CI] / AUC R``: the share D of the
successful adversarial examples it flags at the threshold set for 5 % false positives on clean
validation images, the success A of the attack run against classifier and detector together
(n/a: not run for that attack) and the ROC AUC R of its score, clean test images against the
successful adversarial examples (:data:`DETECTOR_NOTE`).

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
from stadv_sweeps.plans.defense_spec import ATTACK_LABELS, DEFENSE_LABELS, DETECTORS

PAPER_NOTE = (
    "Published numbers: only stAdv's undefended success from the paper's Table 1 (Xiao et al. "
    "2018; all 9 targets per image, tau 0.05) stands beside ours. The paper's defense table "
    "(FGSM, C&W and stAdv against FGSM-, ensemble- and PGD-adversarially trained A, B, C) "
    "could not be checked here and is not reproduced; blur and the denoiser are not in it."
)


DETECTOR_NOTE = (
    "Detector rows (VAE detector, MagNet-style): detect = share of the attack's successful "
    "adversarial examples flagged at the threshold giving 5 % false positives on clean "
    "validation images held out from the training split (never test images); adaptive = "
    "success of the attack run against classifier and detector together (Carlini & Wagner "
    "2017; stAdv, C&W, FGSM, PGD; n/a for the others); AUC = ROC AUC of the detector's score, "
    "clean test images against the successful adversarial examples. The classifier is the "
    "undefended one (clean acc)."
)
UNTARGETED_NOTE = (
    "Columns marked (untargeted) count untargeted success (the prediction is not the true "
    "label): DeepFool takes no targets."
)
#: The detector's columns of :func:`success_table` (NaN on the other rows).
DETECTION_COLUMNS = (
    "detection_rate",
    "detection_ci_low",
    "detection_ci_high",
    "adaptive_success_rate",
    "adaptive_success_ci_low",
    "adaptive_success_ci_high",
    "roc_auc",
)


def _order(values: pd.Series, known: dict[str, str]) -> pd.Series:
    rank = {k: i for i, k in enumerate(known)}
    return values.map(lambda v: rank.get(str(v), len(rank)))


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """``df[name]`` as floats, NaN where the column is missing."""
    if name not in df.columns:
        return pd.Series(math.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce").astype(float)


def success_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial: model, defense, attack, attacks run, success with its 95 %
    interval (``success_kind``: targeted, or untargeted for an untargeted trial), the model's
    clean test accuracy, the paper's number where there is one and, on a detector's rows, the
    :data:`DETECTION_COLUMNS` (NaN elsewhere)."""
    targets = (
        df["targets"].astype(str)
        if "targets" in df.columns
        else pd.Series("", index=df.index, dtype=str)
    )
    untargeted = (targets == "untargeted") | _column(df, SUCCESS).isna()
    stems = {"success": "_rate", "ci_low": "_ci_low", "ci_high": "_ci_high"}
    out = pd.DataFrame(
        {
            "model": df["model"].astype(str),
            "defense": df["defense"].astype(str),
            "attack": df["attack"].astype(str),
            "attacks": df["attacks"].astype(int),
            **{
                col: _column(df, f"targeted_success{sfx}").where(
                    ~untargeted, _column(df, f"untargeted_success{sfx}")
                )
                for col, sfx in stems.items()
            },
            "success_kind": untargeted.map({True: "untargeted", False: "targeted"}),
            "test_accuracy": df["test_accuracy"].astype(float),
        }
    )
    out["paper_success"] = [
        PAPER_TABLE1_SUCCESS.get(m, math.nan)
        if (a, d, t, u) == ("stadv", "none", "all", False)
        else math.nan
        for m, d, a, t, u in zip(
            out["model"], out["defense"], out["attack"], targets, untargeted, strict=True
        )
    ]
    for name in DETECTION_COLUMNS:
        out[name] = _column(df, name)
    rank = out.assign(
        _defense=_order(out["defense"], DEFENSE_LABELS),
        _attack=_order(out["attack"], ATTACK_LABELS),
    )
    rank = rank.sort_values(["model", "_defense", "_attack"])
    return rank.drop(columns=["_defense", "_attack"]).reset_index(drop=True)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def detector_cell(r: pd.Series) -> str:
    """A detector's cell: ``detect D / adaptive A [low, high] / AUC R`` (n/a where not run)."""
    adaptive = _pct(r["adaptive_success_rate"])
    if not math.isnan(r["adaptive_success_rate"]):
        low, high = r["adaptive_success_ci_low"], r["adaptive_success_ci_high"]
        adaptive += f" [{_pct(low)}, {_pct(high)}]"
    auc = "n/a" if math.isnan(r["roc_auc"]) else f"{r['roc_auc']:.3f}"
    return f"detect {_pct(r['detection_rate'])} / adaptive {adaptive} / AUC {auc}"


def attack_header(attack: str, untargeted: bool) -> str:
    """An attack's column header: its label, ``(untargeted)`` when it counts untargeted success
    in a table of targeted ones."""
    name = ATTACK_LABELS.get(attack, attack)
    return f"{name} (untargeted)" if untargeted else name


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows (model, defense), columns: clean accuracy, then each attack's success [95 % CI]
    (a detector's row: :func:`detector_cell`)."""
    mixed = table["success_kind"].nunique() > 1
    untargeted = set(table.loc[table["success_kind"] == "untargeted", "attack"]) if mixed else set()
    rows = []
    for (model, defense), g in table.groupby(["model", "defense"], sort=False):
        row: dict[str, Any] = {
            "model": model,
            "defense": DEFENSE_LABELS.get(defense, defense),
            "clean acc": f"{g['test_accuracy'].iloc[0]:.2%}",
        }
        for _, r in g.iterrows():
            if defense in DETECTORS:
                cell = detector_cell(r)
            else:
                cell = f"{r['success']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]"
            if not math.isnan(r["paper_success"]):
                cell += f" (paper {r['paper_success']:.2%})"
            row[attack_header(r["attack"], r["attack"] in untargeted)] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def notes(table: pd.DataFrame) -> list[str]:
    """The notes under the table: detectors' cells, untargeted columns, the paper's numbers."""
    out = []
    if set(table["defense"]) & set(DETECTORS):
        out.append(DETECTOR_NOTE)
    if table["success_kind"].nunique() > 1:
        out.append(UNTARGETED_NOTE)
    return [*out, PAPER_NOTE]


def metrics(table: pd.DataFrame) -> dict[str, float]:
    """Parent-run metrics: ``success.<attack>.<defense>.<model>``, ``test_accuracy.<defense>.<model>``."""
    out = {}
    for _, r in table.iterrows():
        where = f"{r['attack']}.{r['defense']}.{r['model']}"
        out[f"success.{where}"] = float(r["success"])
        out[f"test_accuracy.{r['defense']}.{r['model']}"] = float(r["test_accuracy"])
        for name, column in (
            ("detection", "detection_rate"),
            ("adaptive_success", "adaptive_success_rate"),
            ("roc_auc", "roc_auc"),
        ):
            if not math.isnan(r[column]):
                out[f"{name}.{where}"] = float(r[column])
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
    table = success_table(df)
    wide = wide_table(table)
    with pd.option_context("display.width", 400, "display.max_columns", 20):
        return "\n".join([_heading(df), wide.to_string(index=False), "", *notes(table)])


def figures(table: pd.DataFrame) -> dict[str, Figure]:
    """Per attack, a heat map of success over defenses x models (a detector's row: the adaptive
    attack's success against classifier and detector, blank where it was not run)."""
    out = {}
    models = sorted(table["model"].unique())
    defenses = [d for d in DEFENSE_LABELS if d in set(table["defense"])]
    against = table["success"].where(
        ~table["defense"].isin(DETECTORS), table["adaptive_success_rate"]
    )
    for attack in [a for a in ATTACK_LABELS if a in set(table["attack"])]:
        rows = table["attack"] == attack
        here = against[rows].set_axis(
            pd.MultiIndex.from_frame(table.loc[rows, ["defense", "model"]])
        )
        values = [[float(here.get((d, m), math.nan)) for m in models] for d in defenses]
        out[f"success_{attack}.png"] = plots.heatmap(
            values,
            [
                f"{DEFENSE_LABELS[d]} (adaptive)" if d in DETECTORS else DEFENSE_LABELS[d]
                for d in defenses
            ],
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
        *(f"{note}\n" for note in notes(table)),
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
