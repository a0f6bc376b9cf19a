"""A sweep's results from MLflow: a DataFrame, the summary tables and figures, a Markdown report.

    python sweeps/results.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment ablation \\
        --out report.md

reads the latest sweep (parent run) of the experiment, or ``--run-id``, and writes the report
with its figures in ``report_files/`` beside it. ``python sweeps/results.py --smoke-test``
first runs ``kappa_tau.py``'s smoke sweep (4 tiny trials on a quick-trained Model B, embedded
Ray or ``--address``) into ``report_sweep/mlflow.db`` (or ``--tracking-uri``), then reports it. The report ranks every swept choice by its
effect on targeted success against the sweep's base setting (the paper's, unless the sweep
changed it), which answers which implementation choice explains the failed reproductions.

API (also used by the sweep driver to print and log its summary)::

    client = MlflowClient(uri)
    parent = find_parent(client, experiment_id(client, "ablation"))
    df = runs_frame(client, parent)          # one row per finished trial
    effects(df, base_options(parent))        # choices ranked by their effect on success
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

from stadv import plots

#: stAdv's targeted success rate on MNIST in Xiao et al. (ICLR 2018), Table 1
#: (tau = 0.05, kappa = 0, all 9 targets of each test image).
PAPER_SUCCESS: dict[str, float] = {"A": 0.9995, "B": 0.9998, "C": 1.0}
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "stadv.sweep"
ROLE_TAG = "stadv.role"
TRIAL_KEY_TAG = "stadv.trial_key"
SUCCESS = "targeted_success_rate"
#: Run parameters that describe the trial rather than an attack option.
CONTEXT_PARAMS = ("model", "dataset", "n_images", "targets", "model_variant")
#: Options that never change what a trial measures (only how it is computed).
NEUTRAL_OPTIONS = ("batch_size", "check")
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


class ResultsError(Exception):
    """No such experiment or sweep."""


# ---------------------------------------------------------------------------------------------
# Reading MLflow
# ---------------------------------------------------------------------------------------------
def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ResultsError(f"no MLflow experiment named {name!r} at {client.tracking_uri}")
    return str(exp.experiment_id)


def find_parent(
    client: MlflowClient, exp_id: str, *, run_id: str | None = None, sweep: str | None = None
) -> Any:
    """The sweep's parent run: ``run_id``, else the latest parent run in the experiment."""
    if run_id is not None:
        return client.get_run(run_id)
    flt = f"tags.`{ROLE_TAG}` = 'parent'"
    if sweep is not None:
        flt += f" and tags.`{SWEEP_TAG}` = '{sweep}'"
    runs = client.search_runs(
        [exp_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise ResultsError(f"experiment {exp_id} holds no sweep (no run tagged {ROLE_TAG}=parent)")
    return runs[0]


def search_all(client: MlflowClient, exp_id: str, filter_string: str) -> list[Any]:
    """Every (non-deleted) run of the experiment matching the filter, page by page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def base_options(parent: Any) -> dict[str, Any]:
    """The sweep's base setting (``base.*`` parameters of the parent run), typed."""
    raw = {k[len("base.") :]: v for k, v in parent.data.params.items() if k.startswith("base.")}
    return {k: _parse(v) for k, v in raw.items()}


def _parse(text: str) -> Any:
    if text == "None":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def runs_frame(client: MlflowClient, parent: Any, *, finished_only: bool = True) -> pd.DataFrame:
    """One row per child run of ``parent``: run id, label, model, the options, the metrics.

    Numeric parameters become floats; the columns are the option names themselves.
    """
    flt = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    runs = search_all(client, parent.info.experiment_id, flt)
    rows = []
    for r in runs:
        if finished_only and r.info.status != "FINISHED":
            continue
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "label": r.data.tags.get("mlflow.runName", ""),
            "trial_key": r.data.tags.get(TRIAL_KEY_TAG, ""),
            "start_time": r.info.start_time,
        }
        row.update({k: _parse(v) for k, v in r.data.params.items()})
        row.update(r.data.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["model", "start_time"]).reset_index(drop=True)
    return df


# ---------------------------------------------------------------------------------------------
# Tables
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
        mask &= df[k].map(_label) == _label(base[k])
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
                "paper_success": PAPER_SUCCESS.get(str(model), math.nan),
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
    key = df[swept].map(_label)
    base_str = {k: _label(base[k]) for k in swept}
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


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


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
                [_label(v) for v in t.index],
                [_label(v) for v in t.columns],
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
            ax.set_xticks(xs, [_label(v) for v in values], rotation=30)
            ax.set_xlabel(p)
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax_s.set_ylim(-0.02, 1.02)
        flows = df["mean_flow_loss"].dropna()
        if len(flows) and flows.min() > 0 and flows.max() / flows.min() > 100:
            ax_f.set_yscale("log")
        fig.suptitle(f"{p} (mean over the other swept options; base {p}={_label(base.get(p))})")
        out[f"vs_{p}.png"] = fig
    return out


# ---------------------------------------------------------------------------------------------
# Text: terminal summary and Markdown report
# ---------------------------------------------------------------------------------------------
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
        + ", ".join(f"{k}={_label(v)}" for k, v in base.items() if k not in NEUTRAL_OPTIONS),
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


def smoke_test(args: argparse.Namespace) -> int:
    """``kappa_tau.py --smoke-test`` into ``args.tracking_uri`` (default: a SQLite store in
    ``<out stem>_sweep/`` beside the report, kept for ``mlflow ui``), then its report to
    ``args.out``; the sweep's exit status if it failed."""
    import kappa_tau  # sibling script: its grids (imported here: it imports this module)
    from grid_sweep import main as sweep_main

    experiment = args.experiment or "results-smoke"
    out = Path(args.out)
    folder = (out.parent / f"{out.stem}_sweep").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    argv = ["--smoke-test", "--tracking-uri", uri, "--experiment-name", experiment]
    argv += ["--storage-path", str(folder / "ray_results")]
    for flag, value in (
        ("--address", args.address),
        ("--store", args.store),
        ("--data-dir", args.data_dir),
    ):
        if value:
            argv += [flag, value]
    status = sweep_main(kappa_tau.DEFAULTS, argv)
    if status != 0:
        print(f"results: the smoke sweep failed (exit status {status})", file=sys.stderr)
        return status
    print(f"wrote {write_report(MlflowClient(uri), experiment, out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python sweeps/results.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--tracking-uri", help="where the sweep was logged (required but for --smoke-test)"
    )
    p.add_argument(
        "--experiment", help="MLflow experiment name (the sweep's; required but for --smoke-test)"
    )
    p.add_argument("--run-id", help="the sweep's parent run (default: the latest sweep)")
    p.add_argument("--out", default="report.md", help="Markdown file to write (default report.md)")
    s = p.add_argument_group("--smoke-test: run kappa_tau's smoke sweep first, then report it")
    s.add_argument(
        "--smoke-test", action="store_true", help="tiny sweep and its report (seconds to a minute)"
    )
    s.add_argument("--address", help="Ray cluster to join (default: an embedded Ray)")
    s.add_argument("--store", help="model store (default $STADV_STORE or ~/.cache/stadv/models)")
    s.add_argument("--data-dir", help="data root (default $STADV_DATA_DIR or ./data)")
    args = p.parse_args(argv)
    if args.smoke_test:
        if args.run_id:
            p.error(f"--run-id {args.run_id} and --smoke-test exclude each other")
        try:
            return smoke_test(args)
        except ResultsError as err:
            print(f"results: error: {err}", file=sys.stderr)
            return 2
    missing = [f for f in ("tracking_uri", "experiment") if not getattr(args, f)]
    if missing:
        p.error(
            "the following arguments are required: "
            + ", ".join("--" + f.replace("_", "-") for f in missing)
        )
    try:
        out = write_report(
            MlflowClient(args.tracking_uri), args.experiment, args.out, run_id=args.run_id
        )
    except ResultsError as err:
        print(f"results: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
