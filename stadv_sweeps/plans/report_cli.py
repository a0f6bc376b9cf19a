"""The report command (``python sweeps/results.py``): a sweep's Markdown report from MLflow.

    python sweeps/results.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment ablation \\
        --out report.md

reads the latest sweep (parent run) of the experiment, or ``--run-id``, and writes the report
with its figures in ``report_files/`` beside it. ``--record DIR`` (a defense sweep) also writes
its cells as records (:mod:`stadv_sweeps.plans.defense_records`) for ``docs/render.py``. ``--smoke-test`` first runs ``kappa_tau``'s
smoke sweep (4 tiny trials on a quick-trained Model B, embedded Ray or ``--address``) into
``report_sweep/mlflow.db`` (or ``--tracking-uri``), then reports it. The report ranks every
swept choice by its effect on targeted success against the sweep's base setting (the paper's,
unless the sweep changed it). A tracking server that does not answer is an error within
seconds, naming it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient

from stadv.store import resolve_store_dir
from stadv_sweeps.engine.errors import ResultsError, SweepError
from stadv_sweeps.engine.report import write_report
from stadv_sweeps.engine.runs import experiment_id, find_parent, runs_frame
from stadv_sweeps.engine.tracking import check_tracking, resolve_tracking_uri
from stadv_sweeps.engine.views import frame_from_mlflow
from stadv_sweeps.plans import kappa_tau
from stadv_sweeps.plans.defense_records import defense_records, write_defense_records

DESCRIPTION = "A sweep's results from MLflow: the summary tables and figures, a Markdown report."


def smoke_test(args: argparse.Namespace) -> int:
    """``kappa_tau.py --smoke-test`` into ``args.tracking_uri`` (default: a SQLite store in
    ``<out stem>_sweep/`` beside the report, kept for ``mlflow ui``), then its report to
    ``args.out``; the sweep's exit status if it failed."""
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
    status = kappa_tau.main(argv)
    if status != 0:
        print(f"results: the smoke sweep failed (exit status {status})", file=sys.stderr)
        return status
    print(f"wrote {write_report(MlflowClient(uri), experiment, out)}")
    return 0


def write_records(client: MlflowClient, args: argparse.Namespace, folder: Path) -> list[Path]:
    """The sweep's cells as records in ``folder`` (a defense sweep only: else a ResultsError)."""
    parent = find_parent(client, experiment_id(client, args.experiment), run_id=args.run_id)
    df = frame_from_mlflow(runs_frame(client, parent))
    try:
        records = defense_records(
            df, parent, command=args.command, store=resolve_store_dir(args.store)
        )
    except ValueError as err:
        raise ResultsError(f"--record: {err}") from None
    return write_defense_records(records, folder)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python sweeps/results.py", description=DESCRIPTION)
    p.add_argument(
        "--tracking-uri", help="where the sweep was logged (required but for --smoke-test)"
    )
    p.add_argument(
        "--experiment", help="MLflow experiment name (the sweep's; required but for --smoke-test)"
    )
    p.add_argument("--run-id", help="the sweep's parent run (default: the latest sweep)")
    p.add_argument("--out", default="report.md", help="Markdown file to write (default report.md)")
    p.add_argument(
        "--record",
        metavar="DIR",
        help="a defense sweep: also write one record per cell and defended model into DIR",
    )
    p.add_argument(
        "--command",
        default="python sweeps/defense_sweep.py",
        help="the sweep's command as run, for --record's records [%(default)s]",
    )
    s = p.add_argument_group("--smoke-test: run kappa_tau's smoke sweep first, then report it")
    s.add_argument(
        "--smoke-test", action="store_true", help="tiny sweep and its report (seconds to a minute)"
    )
    s.add_argument("--address", help="Ray cluster to join (default: an embedded Ray)")
    s.add_argument(
        "--store",
        help="model store (also where --record reads training times; default $STADV_STORE "
        "or ~/.cache/stadv/models)",
    )
    s.add_argument("--data-dir", help="data root (default $STADV_DATA_DIR or ./data)")
    args = p.parse_args(argv)
    if args.smoke_test:
        if args.run_id:
            p.error(f"--run-id {args.run_id} and --smoke-test exclude each other")
        try:
            return smoke_test(args)
        except SweepError as err:
            print(f"results: error: {err}", file=sys.stderr)
            return 2
    missing = [f for f in ("tracking_uri", "experiment") if not getattr(args, f)]
    if missing:
        p.error(
            "the following arguments are required: "
            + ", ".join("--" + f.replace("_", "-") for f in missing)
        )
    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking(uri)
        client = MlflowClient(uri)
        out = write_report(client, args.experiment, args.out, run_id=args.run_id)
        if args.record:
            written = write_records(client, args, Path(args.record))
            print(f"wrote {len(written)} records into {args.record}")
    except SweepError as err:
        print(f"results: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
