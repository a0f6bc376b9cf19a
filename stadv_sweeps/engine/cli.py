"""The sweep scripts' shared command line: where a sweep runs and where its results go.

What a sweep sweeps is each plan's (its flags come from the attacks' option schema,
:mod:`stadv.options`); this module holds the flags every sweep script shares and checks
them before anything starts (no Ray, no tracking store touched for a bad value).
"""

from __future__ import annotations

import argparse
import math

import torch

from stadv_sweeps.engine.errors import SweepError

#: How long the driver waits for a Ray address or a tracking server to answer.
CONNECT_TIMEOUT_S = 10.0


def new_parser(sweep: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"python sweeps/{sweep}.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_run_arguments(p: argparse.ArgumentParser, sweep: str) -> None:
    """Where a sweep runs and where its results go (every sweep script)."""
    r = p.add_argument_group("where it runs and where results go")
    r.add_argument(
        "--address",
        help="join this Ray cluster ('auto', 'HOST:PORT', 'ray://HOST:PORT'); "
        f"an address that does not answer within {CONNECT_TIMEOUT_S:g} s is an error",
    )
    r.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    r.add_argument("--experiment-name", help=f"MLflow experiment (default {sweep})")
    r.add_argument(
        "--storage-path",
        default="ray_results",
        help="Ray Tune state: a folder or a URI such as s3://bucket/path (default ./ray_results)",
    )
    r.add_argument("--store", help="model store (default $STADV_STORE or ~/.cache/stadv/models)")
    r.add_argument("--data-dir", help="data root (default $STADV_DATA_DIR or ./data)")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial: a fraction in (0, 1] shares a GPU (0.25: four trials on one "
        "GPU, each attacking on the GPU Ray assigned it), a whole number above 1 gives a "
        "trial several; 0 runs on CPUs (default 0.5 when the cluster has GPUs, else 0)",
    )
    r.add_argument(
        "--max-failures", type=int, default=2, help="retries of a failed trial (default 2)"
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest unfinished sweep of this experiment (found in the tracking "
        "store) with its saved settings, running only the trials without a finished run "
        "(grid options given now are ignored)",
    )


def check_gpus_per_trial(gpus: float, *, local: bool) -> float:
    """``--gpus-per-trial`` as Ray can schedule it: 0, a fraction in (0, 1] or a whole number;
    ``SweepError`` naming the value otherwise.

    Ray shares a GPU only in fractions of one (a trial cannot hold 1.5 GPUs). ``local`` (no
    ``--address``: the sweep starts its own Ray on this machine) also refuses a GPU share when
    this machine has no CUDA device, before any work, instead of trials that never start.
    """
    if not math.isfinite(gpus) or gpus < 0:
        raise SweepError(f"--gpus-per-trial must be a number >= 0, got {gpus!r}")
    if gpus > 1 and not float(gpus).is_integer():
        raise SweepError(
            f"--gpus-per-trial {gpus!r}: above 1 it must be a whole number of GPUs "
            "(Ray shares a GPU only in fractions of one)"
        )
    if local and gpus > 0 and not torch.cuda.is_available():
        raise SweepError(
            f"--gpus-per-trial {gpus!r} asks for a GPU, but this machine has none "
            "(torch.cuda.is_available() is false): leave it at 0, or join a cluster with GPUs "
            "(--address)"
        )
    return float(gpus)


def check_run_arguments(args: argparse.Namespace) -> None:
    """The "where it runs" values in range, before Ray starts (``SweepError`` naming them)."""
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    if not math.isfinite(cpus) or cpus < 0:
        raise SweepError(f"--cpus-per-trial must be a number >= 0, got {cpus!r}")
    if gpus is not None:
        check_gpus_per_trial(gpus, local=not args.address)
    if cpus == 0 and (gpus is None or gpus == 0):
        raise SweepError(
            f"a trial needs some resource: --cpus-per-trial {cpus:g} with no "
            "--gpus-per-trial > 0 gives it none"
        )
    if args.max_failures < 0:
        raise SweepError(f"--max-failures must be >= 0, got {args.max_failures}")
