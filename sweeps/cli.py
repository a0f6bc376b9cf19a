"""The sweep scripts' command line: the shared "where it runs" options, and the grid sweeps'
"what to sweep" options with :func:`resolve_spec` (script grid, then ``--preset``, the config
file, then the command line)."""

from __future__ import annotations

import argparse
import dataclasses

from spec import (
    CONFIG_KEYS,
    TARGET_CHOICES,
    SweepDefaults,
    SweepError,
    SweepSpec,
    coerce_option,
    grid_from_raw,
    load_config,
    option_kind,
    settable_options,
)

from stadv.attack import StAdv
from stadv.data import DATASETS


def new_parser(sweep: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"python sweeps/{sweep}.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """The grid sweeps' "what to sweep" group and one option per StAdv field."""
    g = p.add_argument_group("what to sweep")
    g.add_argument("--models", nargs="+", metavar="M", help="models (default: A B C)")
    g.add_argument("--dataset", choices=DATASETS, help="data set (default mnist)")
    g.add_argument("--n-images", type=int, metavar="N", help="test images attacked per trial")
    g.add_argument("--targets", choices=TARGET_CHOICES, help="target protocol (default all)")
    g.add_argument(
        "--preset",
        choices=["paper"],
        help="paper: 10,000 images x 9 targets per trial (for a GPU cluster)",
    )
    g.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny grid, model B quick-trained (stored as variant 'smoke'), a few images",
    )
    g.add_argument("--config", metavar="FILE", help="YAML or TOML file (keys: see below)")
    g.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    a = p.add_argument_group(
        "attack options (one value: fixed for every trial; several: swept across the grid)"
    )
    choices = StAdv.options()
    for name in settable_options():
        kind, _ = option_kind(name)
        allowed = choices.get(name)
        a.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"opt_{name}",
            nargs="+",
            metavar="V",
            help=f"one of {', '.join(allowed)}" if allowed else kind.__name__,
        )
    p.epilog = "config file keys:\n" + "\n".join(f"  {k}: {v}" for k, v in CONFIG_KEYS.items())


def add_run_arguments(p: argparse.ArgumentParser, sweep: str) -> None:
    """Where a sweep runs and where its results go (every sweep script)."""
    r = p.add_argument_group("where it runs and where results go")
    r.add_argument(
        "--address", help="join this Ray cluster ('auto', 'HOST:PORT', 'ray://HOST:PORT')"
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
        help="GPU fraction per trial (default 0.5 when the cluster has GPUs, else 0)",
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


def resolve_spec(args: argparse.Namespace, defaults: SweepDefaults) -> SweepSpec:
    """The script's grid, then ``--preset``, the config file, then the command line."""
    spec = defaults.smoke if args.smoke_test else defaults.default
    if args.preset == "paper":
        spec = dataclasses.replace(spec, n_images=10_000, targets="all")
    if args.config:
        raw = load_config(args.config)
        where = f"config file {args.config}"
        attack = raw.get("attack", {})
        if not isinstance(attack, dict):
            raise SweepError(f"{where}: 'attack' must be a mapping option -> value")
        for k in attack:
            coerce_option(k, attack[k])
        models = raw.get("models", spec.models)
        if not isinstance(models, (list, tuple)):
            raise SweepError(f"{where}: 'models' must be a list, e.g. [A, B, C]")
        n_images = raw.get("n_images", spec.n_images)
        if not isinstance(n_images, int) or isinstance(n_images, bool):
            raise SweepError(f"{where}: n_images must be an integer, got {n_images!r}")
        spec = dataclasses.replace(
            spec,
            models=tuple(str(m) for m in models),
            dataset=str(raw.get("dataset", spec.dataset)),
            n_images=n_images,
            targets=str(raw.get("targets", spec.targets)),
            fixed={**spec.fixed, **attack},
            grid=grid_from_raw(raw["grid"], where) if "grid" in raw else spec.grid,
        )
    if args.models:
        spec = dataclasses.replace(spec, models=tuple(args.models))
    if args.dataset:
        spec = dataclasses.replace(spec, dataset=args.dataset)
    if args.n_images is not None:
        spec = dataclasses.replace(spec, n_images=args.n_images)
    if args.targets:
        spec = dataclasses.replace(spec, targets=args.targets)
    for name in settable_options():
        given = getattr(args, f"opt_{name}")
        if given is None:
            continue
        values = [coerce_option(name, v) for v in given]
        grid = tuple({k: v for k, v in sub.items() if k != name} for sub in spec.grid)
        fixed = {k: v for k, v in spec.fixed.items() if k != name}
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            grid = tuple({**sub, name: values} for sub in grid)
        spec = dataclasses.replace(spec, fixed=fixed, grid=grid)
    return spec
