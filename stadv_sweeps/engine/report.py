"""A sweep's summary as text: what the driver prints, the Markdown report, and what is logged
on the parent run (tables, figures, report)."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from stadv import plots
from stadv.models import PAPER_TABLE1_SUCCESS
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
from stadv_sweeps.engine.views import frame_from_mlflow


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
    df = frame_from_mlflow(runs_frame(client, parent))
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
    text = report_markdown(df, base, meta, names)
    out.write_text(text)
    out.with_suffix(".html").write_text(report_html(text, out.parent))
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
        text = report_markdown(df, base, meta, names)
        (folder / "report.md").write_text(text)
        (folder / "report.html").write_text(report_html(text, folder))
        (folder / "effects.json").write_text(
            json.dumps(ranked_choices(effects(df, base)).to_dict(orient="records"), indent=1)
        )
        client.log_artifacts(parent.info.run_id, str(folder))


# ---------------------------------------------------------------------------------------------
# The parent run as MLflow shows it: its description and an HTML report with its figures
# ---------------------------------------------------------------------------------------------
PAPER = "Xiao et al. 2018, Table 1"


def _base_rows(df: pd.DataFrame) -> pd.Series:
    """The trials at the sweep's base setting: ``<model> base`` in a grid sweep, stAdv against
    the undefended model in the defense sweep."""
    if "defense" in df.columns and "attack" in df.columns:
        return (df["defense"].astype(str) == "none") & (df["attack"].astype(str) == "stadv")
    return df["label"].astype(str) == df["model"].astype(str) + " base"


def _with_ci(row: pd.Series, stem: str) -> str:
    rate = row.get(f"{stem}_rate")
    low, high = row.get(f"{stem}_ci_low"), row.get(f"{stem}_ci_high")
    if rate is None or rate != rate:
        return "-"
    if low is None or high is None or low != low:
        return f"{rate:.2%}"
    return f"{rate:.2%} [{low:.1%}, {high:.1%}]"


def parent_description(df: pd.DataFrame, meta: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """The parent run's Markdown description (ours beside the paper per model, with 95 %
    Wilson intervals, then every trial) and its headline metrics (``success_at_base_<model>``,
    ``paper_success_<model>``)."""
    succ = success_column(df)
    stem = succ[: -len("_rate")]
    targets = str(df["targets"].iloc[0]) if "targets" in df.columns and len(df) else ""
    n_images = int(df["n_images"].iloc[0]) if "n_images" in df.columns and len(df) else 0
    lines = [
        f"**{meta.get('sweep', '')}** sweep{' (smoke test)' if meta.get('smoke') else ''}: "
        f"{meta.get('finished', len(df))}/{meta.get('trials', len(df))} trials finished; "
        f"{n_images} test images per trial, targets `{targets}`; success = "
        f"{stem.replace('_', ' ')} rate with its 95 % Wilson interval.",
        "",
        f"| model | paper ({PAPER}) | ours at base [95 % CI] | ours best [95 % CI] | best trial |",
        "|---|---|---|---|---|",
    ]
    metrics: dict[str, float] = {}
    base = _base_rows(df)
    for model in sorted(df["model"].astype(str).unique()):
        here = df[df["model"].astype(str) == model]
        at_base = here[base[here.index]]
        best = here.sort_values(succ, ascending=False).iloc[0]
        paper = PAPER_TABLE1_SUCCESS.get(model, math.nan)
        shown_paper = f"{paper:.2%}" if paper == paper and targets == "all" else "-"
        ours = _with_ci(at_base.iloc[0], stem) if len(at_base) else "-"
        lines.append(
            f"| {model} | {shown_paper} | {ours} | {_with_ci(best, stem)} | {best['label']} |"
        )
        if len(at_base):
            metrics[f"success_at_base_{model}"] = float(at_base.iloc[0][succ])
        if paper == paper and targets == "all":
            metrics[f"paper_success_{model}"] = float(paper)
    lines += ["", "Trials, most successful first:", ""]
    lines += [
        "| trial | success [95 % CI] | mean L_flow | mean L2 | attacks/s |",
        "|---|---|---|---|---|",
    ]
    for _, row in df.sort_values(succ, ascending=False).iterrows():
        lines.append(
            f"| {row['label']} | {_with_ci(row, stem)} | {_num(row.get('mean_flow_loss'))} | "
            f"{_num(row.get('mean_l2'))} | {_num(row.get('attacks_per_second'))} |"
        )
    lines += [
        "",
        "Figures and tables: this run's artifacts (`report.html` shows the report with its "
        "figures; `report.md` is the same text).",
    ]
    if meta.get("url"):
        lines.append(f"Runs of this sweep: <{meta['url']}>")
    return "\n".join(lines), metrics


def _num(v: Any) -> str:
    return "-" if v is None or v != v else f"{float(v):.4g}"


_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"_\(([^)]*)\)_"), r"<em>(\1)</em>"),
)


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if not path.is_file():
        return f"<p>(figure {html.escape(src)} missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(alt)}</figcaption></figure>"
    )


def report_html(markdown: str, folder: Path, title: str = "stAdv sweep report") -> str:
    """The report (our Markdown: headings, tables, lists, images, paragraphs) as one HTML page
    with its figures embedded as base64 PNGs (``folder`` holds the images the Markdown names),
    so MLflow's artifact viewer shows them."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    image = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i].strip().strip("|"))
                i += 1
            cells = [re.split(r"(?<!\\)\|", r) for r in rows if not re.fullmatch(r"[-|: ]+", r)]
            head, *rest = cells
            body.append("<table><thead><tr>")
            body.append("".join(f"<th>{_inline(c.strip())}</th>" for c in head))
            body.append("</tr></thead><tbody>")
            for r in rest:
                tds = "".join(
                    f"<td>{_inline(c.strip().replace(chr(92) + '|', '|'))}</td>" for c in r
                )
                body.append(f"<tr>{tds}</tr>")
            body.append("</tbody></table>")
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("</ul>")
        elif image.match(line):
            m = image.match(line)
            assert m is not None
            body.append(_image(m.group(1), m.group(2), folder))
            i += 1
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not lines[i].startswith(("#", "|", "- ", "!["))
            ):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;"
        "line-height:1.4}table{border-collapse:collapse;margin:.5em 0 1em}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}"
        "figcaption{color:#555;font-size:90%}code{background:#f3f3f3;padding:0 2px}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
