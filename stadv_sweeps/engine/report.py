"""A sweep's summary as text: what the driver prints, the Markdown report, and what is logged
on the parent run (tables, figures, report)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from stadv import plots
from stadv_sweeps.engine.errors import ResultsError
from stadv_sweeps.engine.figures import figures
from stadv_sweeps.engine.runs import base_options, experiment_id, find_parent, runs_frame
from stadv_sweeps.engine.tables import (
    NEUTRAL_OPTIONS,
    best_per_model,
    effects,
    grid_table,
    label,
    markdown_table,
    paper_table,
    ranked_choices,
    success_column,
    swept_columns,
    trials_table,
)
from stadv_sweeps.engine.tags import SWEEP_TAG


def summary_text(df: pd.DataFrame, base: Mapping[str, Any]) -> str:
    """What the driver prints at the end: trials, best per model, paper vs ours, effects."""
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.max_rows", 500
    ):
        parts = [
            "Trials:",
            trials_table(df, base).to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Best setting per model:",
            best_per_model(df, base).to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Paper (Xiao et al. 2018, Table 1, stAdv targeted success) beside ours:",
            paper_table(df, base).to_string(index=False, float_format=lambda v: f"{v:.4f}"),
        ]
        ranked = ranked_choices(effects(df, base))
        if len(ranked):
            parts += ["", "Choices ranked by their effect on success (vs the base setting):"]
            parts.append(ranked.to_string(index=False, float_format=lambda v: f"{v:+.4f}"))
    return "\n".join(parts)


def report_markdown(
    df: pd.DataFrame, base: Mapping[str, Any], meta: Mapping[str, Any], figure_files: Sequence[str]
) -> str:
    succ = success_column(df)
    swept = swept_columns(df, base)
    ranked = ranked_choices(effects(df, base))
    models = " ".join(map(str, sorted(df["model"].unique())))
    lines = [
        f"# stAdv sweep report: {meta.get('experiment', '')}",
        "",
        f"- sweep: `{meta.get('sweep', '')}`, parent run `{meta.get('parent_run_id', '')}` "
        f"({meta.get('status', '')}), tracking URI `{meta.get('tracking_uri', '')}`",
        f"- finished trials: {len(df)}; models: {models}",
        f"- swept options: {', '.join(swept) or '-'}; success metric: `{succ}`",
        "- base setting: "
        + ", ".join(f"{k}={label(v)}" for k, v in base.items() if k not in NEUTRAL_OPTIONS),
        "",
    ]
    if len(ranked):
        top = ranked.iloc[0]
        if top["delta_success"] < 0:
            verdict = (
                f"The most harmful choice is **{top['choice']}**: success changes by "
                f"{top['delta_success']:+.2%} on average over models {top['models']} "
                f"(worst model {top['worst_model_delta']:+.2%}) against the base setting."
            )
        else:
            verdict = "No swept choice lowers success against the base setting."
        lines += ["## Which choice explains the failed reproductions", "", verdict, ""]
        lines += [
            markdown_table(ranked),
            "Per model (each trial paired with the one differing only in that choice):",
            "",
            markdown_table(effects(df, base)),
        ]
    lines += ["## The paper's Table 1 beside ours", "", markdown_table(paper_table(df, base))]
    lines += ["## Best setting per model", "", markdown_table(best_per_model(df, base))]
    if "kappa" in swept and "tau" in swept:
        lines += ["## Success over kappa x tau", ""]
        for model in sorted(df["model"].unique()):
            t = grid_table(df, model, "kappa", "tau").reset_index()
            lines += [f"Model {model} (rows kappa, columns tau):", "", markdown_table(t)]
    lines += ["## All trials", "", markdown_table(trials_table(df, base))]
    if figure_files:
        lines += ["## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})\n" for f in figure_files]
    return "\n".join(lines)


def write_report(
    client: MlflowClient, experiment: str, out: str | Path, *, run_id: str | None = None
) -> Path:
    """Write the Markdown report of a sweep and its figures (``<out stem>_files/``)."""
    exp_id = experiment_id(client, experiment)
    parent = find_parent(client, exp_id, run_id=run_id)
    df = runs_frame(client, parent)
    if not len(df):
        raise ResultsError(f"sweep {parent.info.run_id} has no finished trials yet")
    base = base_options(parent)
    out = Path(out)
    folder = out.parent / f"{out.stem}_files"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, fig in figures(df, base).items():
        plots.save_png(fig, folder / name)
        names.append(f"{folder.name}/{name}")
    df.to_csv(folder / "trials.csv", index=False)
    meta = {
        "experiment": experiment,
        "sweep": parent.data.tags.get(SWEEP_TAG, ""),
        "parent_run_id": parent.info.run_id,
        "status": parent.info.status,
        "tracking_uri": client.tracking_uri,
    }
    out.write_text(report_markdown(df, base, meta, names))
    return out


def write_tables(folder: Path, **tables: pd.DataFrame) -> None:
    """Each table as ``<name>.csv`` and ``<name>.parquet`` in ``folder``."""
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv", index=False)
        table.to_parquet(folder / f"{name}.parquet", index=False)


def log_summary(client: MlflowClient, parent: Any, df: pd.DataFrame) -> None:
    """Log the trials table, figures and report on the parent run (the driver calls this)."""
    base = base_options(parent)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_tables(folder, trials=df)
        names = []
        for name, fig in figures(df, base).items():
            plots.save_png(fig, folder / "figures" / name)
            names.append(f"figures/{name}")
        meta = {
            "experiment": client.get_experiment(parent.info.experiment_id).name,
            "sweep": parent.data.tags.get(SWEEP_TAG, ""),
            "parent_run_id": parent.info.run_id,
            "status": "FINISHED",
            "tracking_uri": client.tracking_uri,
        }
        (folder / "report.md").write_text(report_markdown(df, base, meta, names))
        (folder / "effects.json").write_text(
            json.dumps(ranked_choices(effects(df, base)).to_dict(orient="records"), indent=1)
        )
        client.log_artifacts(parent.info.run_id, str(folder))
