"""What the sweep scripts share: the grid, the Ray Tune trials, MLflow logging and ``--resume``.

A sweep is a list of *trials*; each is one model attacked with one set of :class:`StAdv`
options. The driver (the process running ``sweeps/kappa_tau.py`` or ``sweeps/ablation.py``)

1. builds the trials from the script's grid, a ``--config`` file (YAML or TOML) and the
   command line, and validates every one by constructing its :class:`StAdv`: a bad key or
   value stops the run here, naming it, before Ray starts;
2. checks that the MLflow tracking store answers (in seconds), creates the experiment and
   one parent run there, so the store is initialised before any trial writes to it;
3. starts an embedded Ray sized to the machine, or joins ``--address``;
4. loads every model from the model store once (training a missing one once) and puts the
   weights and the test images in Ray's object store, so trials need no shared disk;
5. runs one Ray Tune trial per grid point (FIFO: every trial runs to the end), retrying a
   failed trial up to ``--max-failures`` times;
6. prints and logs the summary (trials table, best settings per model, the paper's Table 1
   beside ours, heat maps and per-parameter plots on the parent run) and the ``mlflow ui``
   command.

Each trial logs its own nested MLflow child run through the tracking URI it is given
(absolute, so it works from Ray's per-trial working directory and from other nodes when the
URI is a server). A child run carries the tag ``stadv.trial_key``, a hash of everything that
defines the trial: before attacking, a trial looks under its parent run for a FINISHED run
with its key and, if one exists, reports it instead of running again; unfinished leftovers of
a killed attempt are deleted first. So Ray's retries and ``--resume`` never leave duplicates.

The tracking store is also the sweep's memory: the parent run holds the resolved grid
(``stadv_sweep.json``) and the base setting (``base.*`` parameters). ``--resume`` finds the
latest unfinished parent run of the experiment and runs, in a fresh Ray Tune run, only the
trials that have no FINISHED child run, so it works after Ctrl-C, after a killed driver and
from another machine. Ray Tune's own files go to ``<storage-path>/<experiment>/<time>/``.

This module is imported by the scripts as a sibling (``import common``); Ray pickles it by
value (``register_pickle_by_value``), so workers need no copy of ``sweeps/`` on their path:
``ray job submit --working-dir . -- python sweeps/kappa_tau.py`` works as it does locally.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy
import ray
import results  # sibling module: the MLflow -> DataFrame side and the report figures
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray import tune

import stadv
from stadv.attack import StAdv
from stadv.data import DATASETS, check_dataset_name
from stadv.models import check_model_name
from stadv.targets import TARGET_PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
STATE_FILE = "stadv_sweep.json"
TRIAL_KEY_TAG = results.TRIAL_KEY_TAG
SWEEP_TAG = results.SWEEP_TAG
PARENT_TAG = results.PARENT_TAG
#: StAdv fields a sweep cannot set: the device follows the resources Ray gives each trial.
UNSETTABLE = ("device",)
#: Target protocols on the command line; "untargeted" means ``targets=None``.
TARGET_CHOICES = (*TARGET_PROTOCOLS, "untargeted")
#: Relative attack cost of the models (multiply-adds per forward pass, about): trials run
#: most expensive first, so the last trials to finish are short ones (less idle tail).
MODEL_COST = {"A": 45.0, "C": 48.0, "B": 9.0}
#: Config-file keys, with what they mean.
CONFIG_KEYS = {
    "models": "list of model names (A, B, C)",
    "dataset": f"one of {', '.join(DATASETS)}",
    "n_images": "images attacked per trial (the first N of the test split)",
    "targets": f"one of {', '.join(TARGET_CHOICES)}",
    "attack": "StAdv options held fixed (a mapping)",
    "grid": "a mapping option -> list of values, or a list of such mappings (their union)",
}


class SweepError(Exception):
    """A problem the user can fix (bad grid, unreachable store, nothing to resume)."""


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep's trials (JSON-serialisable; saved for ``--resume``).

    ``grid`` is a union of sub-grids: each maps StAdv option names to value lists and
    contributes their Cartesian product, with ``fixed`` for every option it does not name.
    An empty sub-grid ``{}`` is the base setting itself.
    """

    sweep: str
    models: tuple[str, ...]
    dataset: str = "mnist"
    n_images: int = 2
    targets: str = "all"
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: tuple[dict[str, list[Any]], ...] = ({},)
    smoke: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "models": list(self.models), "grid": list(self.grid)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SweepSpec:
        return cls(
            **{**raw, "models": tuple(raw["models"]), "grid": tuple(dict(g) for g in raw["grid"])}
        )


@dataclass(frozen=True)
class Point:
    """One trial: a model and the full, validated StAdv options."""

    model: str
    options: dict[str, Any]
    key: str
    label: str


def settable_options() -> dict[str, dataclasses.Field[Any]]:
    """StAdv's fields a sweep may set (every one but the device)."""
    return {f.name: f for f in dataclasses.fields(StAdv) if f.name not in UNSETTABLE}


def _option_kind(name: str) -> tuple[type, bool]:
    """(base type, accepts None) of a StAdv option, from its annotation."""
    hint = typing.get_type_hints(StAdv)[name]
    args = typing.get_args(hint)
    allows_none = type(None) in args
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, allows_none
    return (hint if hint in (bool, int, float) else str), allows_none


def coerce_option(name: str, value: Any) -> Any:
    """``value`` (from YAML, TOML or the command line) as the type option ``name`` takes.

    Raises ``SweepError`` naming the option and value when it cannot be one; the range and
    choice checks are StAdv's own (it raises ``ValueError`` naming the allowed values).
    """
    options = settable_options()
    if name not in options:
        raise SweepError(
            f"unknown attack option {name!r}; known options: {', '.join(sorted(options))}"
        )
    kind, allows_none = _option_kind(name)
    if value is None or (allows_none and isinstance(value, str) and value.lower() == "none"):
        if allows_none:
            return None
        raise SweepError(f"attack option {name} cannot be None")
    bad = SweepError(f"attack option {name}={value!r} is not a valid {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(value, (dict, list)):
        raise bad
    return str(value)


def _values(name: str, raw: Any) -> list[Any]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SweepError(f"grid option {name} has an empty list of values")
    return [coerce_option(name, v) for v in items]


def trial_key(spec: SweepSpec, model: str, options: Mapping[str, Any]) -> str:
    """A stable hash of everything that defines a trial's result."""
    ident = {
        "model": model,
        "dataset": spec.dataset,
        "n_images": spec.n_images,
        "targets": spec.targets,
        "smoke": spec.smoke,
        "options": dict(sorted(options.items())),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def build_points(spec: SweepSpec) -> list[Point]:
    """The sweep's trials, validated, without duplicates, most expensive model first.

    Raises ``SweepError`` naming the model, option or value that is wrong.
    """
    if not spec.models:
        raise SweepError("no models to sweep")
    try:
        models = [check_model_name(m) for m in spec.models]
        check_dataset_name(spec.dataset)
    except ValueError as err:
        raise SweepError(str(err)) from None
    if spec.n_images < 1:
        raise SweepError(f"n_images must be >= 1, got {spec.n_images}")
    if spec.targets not in TARGET_CHOICES:
        raise SweepError(f"unknown targets {spec.targets!r}; allowed: {', '.join(TARGET_CHOICES)}")
    fixed = {k: coerce_option(k, v) for k, v in spec.fixed.items()}
    try:
        base = _full_options(fixed)
    except (ValueError, TypeError) as err:
        raise SweepError(f"invalid fixed attack options: {err}") from None
    settings: list[dict[str, Any]] = []
    for sub in spec.grid:
        axes = {k: _values(k, v) for k, v in sub.items()}
        combos: list[dict[str, Any]] = [{}]
        for name, values in axes.items():
            combos = [{**c, name: v} for c in combos for v in values]
        for combo in combos:
            try:
                settings.append(_full_options({**fixed, **combo}))
            except (ValueError, TypeError) as err:
                shown = ", ".join(f"{k}={v!r}" for k, v in combo.items()) or "the base setting"
                raise SweepError(f"invalid grid point ({shown}): {err}") from None
    swept = [k for k in base if len({json.dumps(o[k]) for o in settings}) > 1]
    points: list[Point] = []
    seen: set[str] = set()
    for model in sorted(models, key=lambda m: -MODEL_COST.get(m, 1.0)):
        for options in settings:
            key = trial_key(spec, model, options)
            if key in seen:
                continue
            seen.add(key)
            changed = [f"{k}={_fmt(options[k])}" for k in swept if options[k] != base[k]]
            label = " ".join([model, *(changed or ["base"])])
            points.append(Point(model=model, options=options, key=key, label=label))
    return points


def _full_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every settable StAdv option, validated by StAdv itself (``ValueError`` naming a bad one)."""
    attack = StAdv(**options)
    return {k: v for k, v in attack.to_dict().items() if k not in UNSETTABLE}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Command line and config files
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepDefaults:
    """A script's own settings: its default grid and the tiny one of ``--smoke-test``."""

    sweep: str
    description: str
    default: SweepSpec
    smoke: SweepSpec


def build_parser(defaults: SweepDefaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python sweeps/{defaults.sweep}.py",
        description=defaults.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        kind, _ = _option_kind(name)
        allowed = choices.get(name)
        a.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"opt_{name}",
            nargs="+",
            metavar="V",
            help=f"one of {', '.join(allowed)}" if allowed else kind.__name__,
        )
    r = p.add_argument_group("where it runs and where results go")
    r.add_argument(
        "--address", help="join this Ray cluster ('auto', 'HOST:PORT', 'ray://HOST:PORT')"
    )
    r.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    r.add_argument("--experiment-name", help=f"MLflow experiment (default {defaults.sweep})")
    r.add_argument(
        "--storage-path", default="ray_results", help="Ray Tune state (default ./ray_results)"
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
    p.epilog = "config file keys:\n" + "\n".join(f"  {k}: {v}" for k, v in CONFIG_KEYS.items())
    return p


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) sweep config and check its keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SweepError(f"cannot read config file {path}: {err}") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise SweepError("TOML configs need Python >= 3.11; use YAML") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SweepError(f"config file {path} is not valid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise SweepError(f"config file {path} is not valid YAML: {err}") from None
    else:
        raise SweepError(f"config file {path} must end in .yaml, .yml or .toml")
    if not isinstance(raw, dict):
        raise SweepError(f"config file {path} must hold a mapping at the top level")
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise SweepError(
            f"config file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(CONFIG_KEYS)}"
        )
    return raw


def _grid_from_raw(raw: Any, where: str) -> tuple[dict[str, list[Any]], ...]:
    subs = raw if isinstance(raw, list) else [raw]
    out = []
    for sub in subs:
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise SweepError(f"{where}: each grid entry must be a mapping option -> values")
        for k in sub:
            if k not in settable_options():
                raise SweepError(
                    f"{where}: unknown attack option {k!r} in grid; known options: "
                    f"{', '.join(sorted(settable_options()))}"
                )
        out.append({k: (v if isinstance(v, list) else [v]) for k, v in sub.items()})
    return tuple(out)


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
            grid=_grid_from_raw(raw["grid"], where) if "grid" in raw else spec.grid,
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


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI with local paths made absolute (trials run in other directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if "://" not in uri:
        raise SweepError(
            f"tracking URI {uri!r} is a plain path: MLflow >= 3.13 no longer accepts file "
            f"stores; use sqlite:///{uri.rstrip('/')}.db or an http(s):// server"
        )
    return uri


@contextmanager
def _quick_http() -> Iterator[None]:
    """No retries and a short timeout, so an unreachable server fails in seconds."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_tracking(uri: str) -> None:
    """Fail in seconds, naming the URI, when the tracking store does not answer.

    For a local SQLite store this also creates and migrates it, in this one process, before
    any trial writes to it (concurrent first writers race on the schema migration).
    """
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise SweepError(f"tracking URI {uri} is unreachable: folder {folder} does not exist")
    try:
        with _quick_http():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store cannot be used; say which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SweepError(f"tracking URI {uri} is unreachable: {first[:300]}") from None


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {uri}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "stadv": stadv.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
    }


def _params(options: Mapping[str, Any], prefix: str = "") -> list[Param]:
    return [Param(prefix + k, str(v)) for k, v in sorted(options.items())]


def _tags(tags: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


def _metrics(values: Mapping[str, float]) -> list[Metric]:
    now = int(time.time() * 1000)
    out = []
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(Metric(k, float(v), now, 0))
    return out


def child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, key: str | None = None
) -> list[Any]:
    """The parent's (non-deleted) child runs, all of them or those of one trial key."""
    flt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if key is not None:
        flt += f" and tags.`{TRIAL_KEY_TAG}` = '{key}'"
    return results.search_all(client, experiment_id, flt)


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker)
# ---------------------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One grid point: attack, log a nested MLflow child run, report metrics to Tune.

    ``config["point"]`` is the trial (model, options, key, label), ``config["ctx"]`` the
    sweep's shared settings; ``data`` holds object-store references to the models' weights
    and the images.
    """
    point, ctx = config["point"], config["ctx"]
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    # one "View run at <url>" line per trial from every worker would bury the progress lines
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = MlflowClient(ctx["tracking_uri"])
    exp_id, parent = ctx["experiment_id"], ctx["parent_run_id"]

    previous = child_runs(client, exp_id, parent, point["key"])
    done = [r for r in previous if r.info.status == "FINISHED"]
    if done:  # finished before an interruption or a retry: report it, do not run it again
        run = done[0]
        tune.report({**run.data.metrics, "mlflow_run_id": run.info.run_id, "reused": 1})
        return
    for r in previous:  # a killed or failed attempt: its partial run must not linger
        client.delete_run(r.info.run_id)

    gpu_ids = ray.get_gpu_ids()
    device = torch.device("cuda" if gpu_ids and torch.cuda.is_available() else "cpu")
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    context = tune.get_context()
    tags = {
        PARENT_TAG: parent,
        TRIAL_KEY_TAG: point["key"],
        SWEEP_TAG: ctx["sweep"],
        "mlflow.source.name": f"sweeps/{ctx['sweep']}.py",
        "mlflow.source.git.commit": ctx["git_commit"],
        "git_commit": ctx["git_commit"],
        "model": point["model"],
        "dataset": ctx["dataset"],
        "device": f"{device} ({device_name})",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "ray_trial_id": context.get_trial_id() if context else "",
        **{f"version.{k}": v for k, v in ctx["versions"].items()},
    }
    # tag values must be strings (the REST store rejects anything else)
    run = client.create_run(
        exp_id, run_name=point["label"], tags={k: str(v) for k, v in tags.items()}
    )
    run_id = run.info.run_id
    try:
        metrics = _attack_and_log(client, run_id, point, ctx, data, device)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    tune.report({**metrics, "mlflow_run_id": run_id, "reused": 0})


def _attack_and_log(
    client: Any,
    run_id: str,
    point: dict[str, Any],
    ctx: dict[str, Any],
    data: dict[str, Any],
    device: Any,
) -> dict[str, float]:
    from stadv import plots
    from stadv.metrics import attack_table, summarize
    from stadv.models import build_model, predict

    start = time.perf_counter()
    model_name = point["model"]
    weights = ray.get(data["models"][model_name])
    images, labels = ray.get(data["images"])
    model = build_model(model_name)
    model.load_state_dict(weights)
    model.to(device).eval()
    images, labels = images.to(device), labels.to(device)
    clean_accuracy = float((predict(model, images) == labels).float().mean())

    attack = StAdv(**point["options"])
    targets = None if ctx["targets"] == "untargeted" else ctx["targets"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attack(model, images, labels, targets=targets)
    metrics: dict[str, float] = dict(summarize(result))
    metrics["clean_accuracy"] = clean_accuracy
    metrics["n_images"] = float(images.shape[0])

    params = {
        **point["options"],
        "model": model_name,
        "dataset": ctx["dataset"],
        "n_images": images.shape[0],
        "targets": ctx["targets"],
        "model_variant": ctx["variant"] or "default",
    }
    notes = sorted({str(w.message) for w in caught})
    client.log_batch(
        run_id,
        params=_params(params),
        tags=_tags({"warnings": " | ".join(notes)[:4000]} if notes else {}),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = attack_table(result)
        table.to_parquet(folder / "attacks.parquet", index=False)
        table.to_csv(folder / "attacks.csv", index=False)
        images_cpu, labels_cpu = images.cpu(), labels.cpu()
        if result.targeted:
            plots.save_png(
                plots.figure2_grid(result, images_cpu, labels_cpu), folder / "figure2_grid.png"
            )
        hits = result.success.nonzero().flatten()
        index = int(hits[0]) if len(hits) else 0
        plots.save_png(
            plots.flow_quiver(result, index, images=images_cpu), folder / "flow_quiver.png"
        )
        plots.save_png(plots.target_heatmap(result), folder / "target_heatmap.png")
        client.log_artifacts(run_id, str(folder))
    metrics["trial_seconds"] = time.perf_counter() - start
    client.log_batch(run_id, metrics=_metrics(metrics))
    return metrics


# ---------------------------------------------------------------------------------------------
# Driver side: models, Ray, Tune
# ---------------------------------------------------------------------------------------------
def prepare_data(spec: SweepSpec, data_dir: str | None) -> tuple[Any, Any]:
    """The first ``n_images`` test images and labels (raises naming the missing data)."""
    from stadv.data import load_tensors

    test = load_tensors(spec.dataset, split="test", data_dir=data_dir)
    if spec.n_images > len(test):
        raise SweepError(
            f"n_images={spec.n_images} but the {spec.dataset} test split has {len(test)}"
        )
    part = test.slice(0, spec.n_images)
    return part.images.contiguous(), part.labels.contiguous()


def prepare_models(spec: SweepSpec, store: str | None, data_dir: str | None) -> dict[str, Any]:
    """Each model's weights from the store (CPU tensors), training a missing one once, here.

    Smoke tests use variant ``smoke``: a one-epoch model on 2,000 images, stored under its own
    name so it never stands in for a fully trained one.
    """
    from stadv.store import checkpoint_path, load_checkpoint, train_and_store

    variant = "smoke" if spec.smoke else ""
    weights = {}
    for name in dict.fromkeys(check_model_name(m) for m in spec.models):
        path = checkpoint_path(name, spec.dataset, store=store, variant=variant)
        if path.exists() or path.with_suffix(".json").exists():
            model, info = load_checkpoint(path, model_name=name)
            how = f"loaded {path} (test accuracy {info.test_accuracy:.2%})"
        else:
            quick = {"epochs": 1, "train_limit": 2000} if spec.smoke else {}
            print(f"model {name}: not in the store, training it once ({path}) ...", flush=True)
            model, info = train_and_store(
                name,
                dataset=spec.dataset,
                store=store,
                data_dir=data_dir,
                variant=variant,
                progress=sys.stdout.isatty(),
                **quick,
            )
            how = f"trained in {info.train_seconds:.0f} s (test accuracy {info.test_accuracy:.2%})"
        print(f"model {name}: {how}", flush=True)
        weights[name] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return weights


def init_ray(address: str | None) -> bool:
    """Join ``address`` or start an embedded Ray sized to this machine; True if started here."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(address="local", num_cpus=cpus or 1, **kwargs)
    return True


def _register_by_value() -> None:
    """Ship this module and ``results`` to workers by value (see the module docstring)."""
    for module in (sys.modules[__name__], results):
        ray.cloudpickle.register_pickle_by_value(module)


def trial_name(trial: Any) -> str:
    point = trial.config["point"]
    return f"{point['model']}-{point['key'][:10]}"


class Progress(tune.Callback):
    """Prints one line per finished, retried or failed trial (Tune calls it in the driver)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()

    def _line(self, trial: Any, what: str, extra: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        count = f"{self.done + self.failed:>3}/{self.total}"
        label = trial.config["point"]["label"]
        print(f"[{count} {elapsed:6.0f} s] {what:<6} {label}{extra}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        m = trial.last_result or {}
        rate = m.get("targeted_success_rate", m.get("untargeted_success_rate", math.nan))
        extra = (
            f"  success {rate:7.2%}  L_flow {m.get('mean_flow_loss', math.nan):8.3g}"
            f"  attack {m.get('seconds', math.nan):6.1f} s"
        )
        if m.get("reused"):
            extra += "  (finished earlier: reused its run)"
        self._line(trial, "done", extra)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trial, "retry", "  (the trial failed; Ray runs it again)")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1
        self._line(trial, "FAILED", f"  (after {trial.num_failures} attempts)")


# ---------------------------------------------------------------------------------------------
# The parent run and resume
# ---------------------------------------------------------------------------------------------
def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it if needed.

    With a SQLite store the artifacts go beside the database (``<db folder>/mlruns/<name>``);
    MLflow's own default, ``./mlruns`` under whatever directory the driver runs in, would
    scatter one sweep's files over every working directory it was started from.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise SweepError(
                f"MLflow experiment {name!r} is deleted; restore it or pick another name"
            )
        return str(exp.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        location = str(Path(uri[len("sqlite:///") :]).parent / "mlruns" / slug)
    return str(client.create_experiment(name, artifact_location=location))


def create_parent(
    client: MlflowClient, exp_id: str, spec: SweepSpec, points: Sequence[Point]
) -> Any:
    """The sweep's parent run, with the base setting as ``base.*`` parameters and the whole
    resolved grid as ``sweep.json`` (what ``--resume`` reads back)."""
    base = _full_options({k: coerce_option(k, v) for k, v in spec.fixed.items()})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        exp_id,
        run_name=f"{spec.sweep}-{stamp}",
        tags={
            results.ROLE_TAG: "parent",
            SWEEP_TAG: spec.sweep,
            "mlflow.source.name": f"sweeps/{spec.sweep}.py",
            "mlflow.source.git.commit": git_commit(),
            "git_commit": git_commit(),
            "hostname": socket.gethostname(),
            **{f"version.{k}": v for k, v in versions().items()},
        },
    )
    params = {
        "sweep": spec.sweep,
        "models": " ".join(spec.models),
        "dataset": spec.dataset,
        "n_images": spec.n_images,
        "targets": spec.targets,
        "smoke_test": spec.smoke,
        "trials": len(points),
    }
    client.log_batch(run.info.run_id, params=_params(params) + _params(base, prefix="base."))
    with tempfile.TemporaryDirectory() as tmp:
        state = {"spec": spec.to_json(), "points": [dataclasses.asdict(p) for p in points]}
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=1))
        client.log_artifact(run.info.run_id, str(Path(tmp) / STATE_FILE))
    return client.get_run(run.info.run_id)


def find_resumable(client: MlflowClient, exp_id: str, sweep: str) -> tuple[Any, SweepSpec] | None:
    """The latest sweep of this kind in the experiment and its saved spec; None if it finished.

    Raises ``SweepError`` when there is no sweep to resume at all.
    """
    try:
        parent = results.find_parent(client, exp_id, sweep=sweep)
    except results.ResultsError:
        name = client.get_experiment(exp_id).name
        raise SweepError(f"nothing to resume: experiment {name!r} holds no {sweep} sweep") from None
    if parent.info.status == "FINISHED":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, STATE_FILE, tmp)
        state = json.loads(Path(path).read_text())
    return parent, SweepSpec.from_json(state["spec"])


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
def _slots(cpus: float, gpus: float) -> int:
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 0) // cpus) if cpus > 0 else 10**6
    if gpus > 0:
        slots = min(slots, int(res.get("GPU", 0) // gpus))
    return max(slots, 0)


def _resources(args: argparse.Namespace) -> tuple[float, float]:
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if args.cpus_per_trial <= 0 and gpus <= 0:
        raise SweepError("a trial needs some resource: --cpus-per-trial or --gpus-per-trial > 0")
    if _slots(args.cpus_per_trial, gpus) < 1:
        have = ray.cluster_resources()
        raise SweepError(
            f"no trial fits the cluster: asked {args.cpus_per_trial} CPU and {gpus} GPU per trial, "
            f"the cluster has {have.get('CPU', 0)} CPU and {have.get('GPU', 0)} GPU"
        )
    return float(args.cpus_per_trial), float(gpus)


def run_tune(
    points: Sequence[Point],
    ctx: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
    storage: Path,
    resources: tuple[float, float],
) -> Any:
    cpus, gpus = resources
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data), {"cpu": cpus, "gpu": gpus}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "point": tune.grid_search([dataclasses.asdict(p) for p in points]),
            "ctx": ctx,
        },
        tune_config=tune.TuneConfig(
            scheduler=tune.schedulers.FIFOScheduler(),
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"),
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            callbacks=[Progress(len(points))],
            verbose=0,
        ),
    )
    return tuner.fit()


def _print_points(points: Sequence[Point]) -> None:
    for i, p in enumerate(points, 1):
        print(f"{i:>4}  {p.key}  {p.label}")


def _resume_hint(args: argparse.Namespace, sweep: str, uri: str, experiment: str) -> str:
    parts = [f"python sweeps/{sweep}.py --resume --tracking-uri {uri}"]
    parts.append(f"--experiment-name {experiment}")
    for flag in ("address", "store", "data_dir", "storage_path"):
        value = getattr(args, flag)
        if value and not (flag == "storage_path" and value == "ray_results"):
            parts.append(f"--{flag.replace('_', '-')} {value}")
    return " ".join(parts)


def main(defaults: SweepDefaults, argv: Sequence[str] | None = None) -> int:
    """Run a sweep script; returns the exit status: 0 done, 1 trials failed, 2 bad input,
    130 interrupted (continue with ``--resume``)."""
    from stadv.data import DataNotFoundError
    from stadv.store import CheckpointError

    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    try:
        return Driver(args, defaults).run()
    except (SweepError, DataNotFoundError, CheckpointError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


class Driver:
    """One invocation of a sweep script, from the command line to the summary."""

    def __init__(self, args: argparse.Namespace, defaults: SweepDefaults) -> None:
        self.args = args
        self.sweep = defaults.sweep
        self.defaults = defaults
        self.started = time.perf_counter()
        self.experiment = args.experiment_name or defaults.sweep
        self.uri = resolve_tracking_uri(args.tracking_uri)
        self.tune_seconds = 0.0

    def run(self) -> int:
        args = self.args
        parent = None
        if args.resume:
            check_tracking(self.uri)
            client = MlflowClient(self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise SweepError(
                    f"nothing to resume: no experiment {self.experiment!r} at {self.uri}"
                )
            found = find_resumable(client, str(exp.experiment_id), self.sweep)
            if found is None:
                latest = f"the latest {self.sweep} sweep in {self.experiment!r}"
                print(f"nothing to resume: {latest} has finished")
                return 0
            parent, spec = found
            print(
                f"resuming sweep {parent.info.run_id} ({parent.info.run_name}), its saved settings"
            )
        else:
            spec = resolve_spec(args, self.defaults)
        points = build_points(spec)
        if args.dry_run:
            _print_points(points)
            print(f"{len(points)} trials")
            return 0
        if parent is None:
            check_tracking(self.uri)
        images, labels = prepare_data(spec, args.data_dir)
        started_ray = init_ray(args.address)
        try:
            resources = _resources(args)
            train_start = time.perf_counter()
            weights = prepare_models(spec, args.store, args.data_dir)
            self.started += time.perf_counter() - train_start  # training is not sweep time
            client = MlflowClient(self.uri)
            if parent is None:
                exp_id = get_or_create_experiment(client, self.experiment, self.uri)
                parent = create_parent(client, exp_id, spec, points)
            else:
                client.update_run(parent.info.run_id, status="RUNNING")
            data = {"models": weights, "images": (images, labels)}
            return self._sweep(client, parent, spec, points, data, resources)
        finally:
            if started_ray:
                ray.shutdown()

    def _sweep(
        self,
        client: MlflowClient,
        parent: Any,
        spec: SweepSpec,
        points: Sequence[Point],
        data: dict[str, Any],
        resources: tuple[float, float],
    ) -> int:
        exp_id, parent_id = str(parent.info.experiment_id), parent.info.run_id
        done = _finished_keys(client, exp_id, parent_id)
        todo = [p for p in points if p.key not in done]
        cpus, gpus = resources
        slots = _slots(cpus, gpus)
        print(
            f"sweep {spec.sweep}: {len(points)} trials, {len(points) - len(todo)} finished before; "
            f"{spec.n_images} images, targets={spec.targets}; models {' '.join(spec.models)}; "
            f"{cpus:g} CPU + {gpus:g} GPU per trial, {slots} at a time",
            flush=True,
        )
        print(f"MLflow: experiment {self.experiment!r}, parent run {parent_id} at {self.uri}")
        ctx = {
            "sweep": spec.sweep,
            "tracking_uri": self.uri,
            "experiment_id": exp_id,
            "parent_run_id": parent_id,
            "dataset": spec.dataset,
            "targets": spec.targets,
            "variant": "smoke" if spec.smoke else "",
            "cpus_per_trial": cpus,
            "git_commit": git_commit(),
            "versions": versions(),
        }
        status = 0
        ran: list[dict[str, Any]] = []
        if todo:
            _register_by_value()
            refs = {
                "models": {m: ray.put(w) for m, w in data["models"].items()},
                "images": ray.put(data["images"]),
            }
            storage = Path(self.args.storage_path).resolve() / self.experiment
            tune_start = time.perf_counter()
            try:
                grid = run_tune(todo, ctx, refs, self.args, storage, resources)
            except KeyboardInterrupt:  # a second Ctrl-C: Tune gave up saving; MLflow knows
                client.set_terminated(parent_id, "KILLED")
                print(f"\ninterrupted; continue with:\n  {self._hint()}")
                return 130
            for r in grid:
                if r.error is not None:
                    label = r.config["point"]["label"]
                    print(f"trial {label} failed: {r.error!r}", file=sys.stderr)
                    status = 1
                elif r.metrics and not r.metrics.get("reused"):
                    ran.append(r.metrics)
            self.tune_seconds = time.perf_counter() - tune_start
        missing = [p for p in points if p.key not in _finished_keys(client, exp_id, parent_id)]
        self._summarise(client, parent_id, len(points), len(missing), ran, min(len(todo), slots))
        if missing:
            client.set_terminated(parent_id, "FAILED" if status else "KILLED")
            print(f"{len(missing)} trials did not finish; continue with:\n  {self._hint()}")
            return status or 130
        client.set_terminated(parent_id, "FINISHED")
        return status

    def _summarise(
        self,
        client: MlflowClient,
        parent_id: str,
        total: int,
        missing: int,
        ran: Sequence[Mapping[str, Any]],
        parallel: int,
    ) -> None:
        """Print the tables and overhead; log the summary, figures and report on the parent."""
        parent = client.get_run(parent_id)
        df = results.runs_frame(client, parent)
        if len(df):
            print()
            print(results.summary_text(df, results.base_options(parent)))
        wall = time.perf_counter() - self.started
        attack = sum(float(m.get("seconds", 0.0)) for m in ran)
        ideal = attack / max(1, parallel)
        overhead = wall / ideal - 1 if ideal > 0 else math.nan
        tune_overhead = self.tune_seconds / ideal - 1 if ideal > 0 else math.nan
        print(
            f"\n{total - missing}/{total} trials finished. This run: {len(ran)} trials; their "
            f"attacks took {attack:.0f} s, {ideal:.0f} s on {parallel} parallel slots. Wall time "
            f"{wall:.0f} s (model training excluded, this summary included): overhead "
            f"{overhead:+.1%}; Ray Tune loop {self.tune_seconds:.0f} s: overhead {tune_overhead:+.1%}"
        )
        values = {
            "trials_finished": float(total - missing),
            "sweep_seconds": wall,
            "tune_seconds": self.tune_seconds,
            "attack_seconds_sum": attack,
            "parallel_slots": float(parallel),
            "overhead": overhead,
            "tune_overhead": tune_overhead,
        }
        if len(df):
            succ = results.success_column(df)
            values.update(
                {f"best_success_{m}": float(g[succ].max()) for m, g in df.groupby("model")}
            )
        client.log_batch(parent_id, metrics=_metrics(values))
        if len(df):
            results.log_summary(client, parent, df)
        print(f"\nBrowse the runs:\n  {ui_command(self.uri)}")
        print("Report:")
        print(
            f"  python sweeps/results.py --tracking-uri {self.uri} --experiment {self.experiment}"
        )

    def _hint(self) -> str:
        return _resume_hint(self.args, self.sweep, self.uri, self.experiment)


def _finished_keys(client: MlflowClient, exp_id: str, parent_id: str) -> set[str]:
    runs = child_runs(client, exp_id, parent_id)
    return {r.data.tags.get(TRIAL_KEY_TAG, "") for r in runs if r.info.status == "FINISHED"}
