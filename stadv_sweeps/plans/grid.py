"""Option-grid sweeps of one attack (``kappa_tau``, ``ablation``): their spec, trials, command
line and summary, as a :class:`~stadv_sweeps.engine.runner.SweepPlan`.

A grid sweep is a :class:`SweepSpec`: models, data, target protocol, the attack (stAdv unless
the spec names another registered attack), its options held fixed and a union of sub-grids.
:func:`build_points` turns it into :class:`~stadv_sweeps.engine.spec.Point` s, one per trial,
each holding its attack object built and validated once by the attack's option schema
(:mod:`stadv.options`): command-line strings, YAML/TOML scalars and the scripts' own values
are typed there, and a bad key or value stops the sweep before anything runs, naming it.

A plan module declares its grids as :class:`SweepDefaults` and runs :func:`main`::

    DEFAULTS = SweepDefaults(sweep="kappa_tau", description=__doc__, default=SweepSpec(...),
                             smoke=SweepSpec(...))
    main(DEFAULTS)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient

from stadv.data import DATASETS
from stadv.options import add_option_flags, options
from stadv.registry import attack_class
from stadv.targets import TARGET_CHOICES
from stadv_sweeps.engine import report, runner
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.prepare import prepare_models
from stadv_sweeps.engine.runs import base_options as parent_base_options
from stadv_sweeps.engine.spec import (
    MODEL_COST,
    Point,
    attack_options,
    check_common,
    config_int,
    config_models,
    digest,
    fmt,
    key_options,
    load_config,
    make_attack,
    parse_option,
)
from stadv_sweeps.engine.tables import success_column

__all__ = ["GridSweep", "SweepDefaults", "SweepSpec", "build_points", "main"]

#: Config-file keys, with what they mean.
CONFIG_KEYS = {
    "models": "list of model names (A, B, C)",
    "dataset": f"one of {', '.join(DATASETS)}",
    "n_images": "images attacked per trial (the first N of the test split)",
    "targets": f"one of {', '.join(TARGET_CHOICES)}",
    "attack": "the attack's options held fixed (a mapping option -> value)",
    "grid": "a mapping option -> list of values, or a list of such mappings (their union)",
}


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep's trials (JSON-serialisable; saved for ``--resume``).

    ``grid`` is a union of sub-grids: each maps option names of ``attack`` to value lists and
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
    attack: str = "stadv"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "models": list(self.models), "grid": list(self.grid)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SweepSpec:
        return cls(
            **{**raw, "models": tuple(raw["models"]), "grid": tuple(dict(g) for g in raw["grid"])}
        )


@dataclass(frozen=True)
class SweepDefaults:
    """A grid sweep's own settings: its default grid and the tiny one of ``--smoke-test``."""

    sweep: str
    description: str
    default: SweepSpec
    smoke: SweepSpec


def trial_key(spec: SweepSpec, model: str, options: Mapping[str, Any]) -> str:
    """A stable hash of everything that defines a trial's result (stAdv trials keep the keys
    they had before other attacks could be swept, so older sweeps resume)."""
    ident: dict[str, Any] = {
        "model": model,
        "dataset": spec.dataset,
        "n_images": spec.n_images,
        "targets": spec.targets,
        "smoke": spec.smoke,
        "options": key_options(options),
    }
    if spec.attack != "stadv":
        ident["attack"] = spec.attack
    return digest(ident)


def _values(spec: SweepSpec, name: str, raw: Any) -> list[Any]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SweepError(f"grid option {name} has an empty list of values")
    return [parse_option(spec.attack, name, v) for v in items]


def build_points(spec: SweepSpec) -> list[Point]:
    """The sweep's trials, validated, without duplicates, most expensive model first.

    Raises ``SweepError`` naming the model, option or value that is wrong.
    """
    models = check_common(spec.models, spec.dataset, spec.n_images, spec.targets)
    if not spec.grid:
        raise SweepError("the grid is empty: give at least one sub-grid ({} is the base setting)")
    base = make_attack(spec.attack, spec.fixed, "fixed options: ")
    attacks: list[Any] = []
    for sub in spec.grid:
        axes = {k: _values(spec, k, v) for k, v in sub.items()}
        combos: list[dict[str, Any]] = [{}]
        for name, values in axes.items():
            combos = [{**c, name: v} for c in combos for v in values]
        for combo in combos:
            shown = ", ".join(f"{k}={v!r}" for k, v in combo.items()) or "the base setting"
            attacks.append(
                make_attack(spec.attack, {**spec.fixed, **combo}, f"grid point ({shown}): ")
            )
    base_values = attack_options(base)
    settings = [attack_options(a) for a in attacks]
    swept = [k for k in base_values if len({json.dumps(o[k]) for o in settings}) > 1]
    points: list[Point] = []
    seen: set[str] = set()
    for model in sorted(models, key=lambda m: -MODEL_COST.get(m, 1.0)):
        for made, setting in zip(attacks, settings, strict=True):
            key = trial_key(spec, model, setting)
            if key in seen:
                continue
            seen.add(key)
            changed = [f"{k}={fmt(setting[k])}" for k in swept if setting[k] != base_values[k]]
            label = " ".join([model, *(changed or ["base"])])
            points.append(Point(model=model, attack=made, key=key, label=label))
    return points


def base_options(spec: SweepSpec) -> dict[str, Any]:
    """The base setting: every option at the spec's fixed value or its default."""
    return attack_options(make_attack(spec.attack, spec.fixed, "fixed options: "))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def add_grid_arguments(p: argparse.ArgumentParser, attack: str) -> None:
    """The grid sweeps' "what to sweep" group and one flag per option of ``attack``."""
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
        f"{attack} options (one value: fixed for every trial; several: swept across the grid)"
    )
    add_option_flags(a, options(attack_class(attack)), dest_prefix="opt_", many=True)
    p.epilog = "config file keys:\n" + "\n".join(f"  {k}: {v}" for k, v in CONFIG_KEYS.items())


def _grid_from_raw(spec: SweepSpec, raw: Any, where: str) -> tuple[dict[str, list[Any]], ...]:
    """A config file's ``grid`` (one mapping or a list of them) as sub-grids of value lists."""
    subs = raw if isinstance(raw, list) else [raw]
    if not subs or raw == {}:
        raise SweepError(
            f"{where}: 'grid' is empty; give option -> values (a list entry may be {{}} for "
            "the base setting), or leave 'grid' out for the script's grid"
        )
    known = options(attack_class(spec.attack))
    out = []
    for sub in subs:
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            raise SweepError(f"{where}: each grid entry must be a mapping option -> values")
        for k in sub:
            if k not in known:
                raise SweepError(
                    f"{where}: unknown attack option {k!r} in grid ({spec.attack}); known "
                    f"options: {', '.join(known)}"
                )
        out.append({k: (v if isinstance(v, list) else [v]) for k, v in sub.items()})
    return tuple(out)


def resolve_spec(args: argparse.Namespace, defaults: SweepDefaults) -> SweepSpec:
    """The plan's grid, then ``--preset``, the config file, then the command line."""
    spec = defaults.smoke if args.smoke_test else defaults.default
    if args.preset == "paper":
        spec = dataclasses.replace(spec, n_images=10_000, targets="all")
    if args.config:
        where = f"config file {args.config}"
        raw = load_config(args.config, CONFIG_KEYS)
        fixed = raw.get("attack", {})
        if not isinstance(fixed, dict):
            raise SweepError(f"{where}: 'attack' must be a mapping option -> value")
        for k, v in fixed.items():
            parse_option(spec.attack, k, v, f"{where}: ")
        spec = dataclasses.replace(
            spec,
            models=config_models(raw, spec.models, where),
            dataset=str(raw.get("dataset", spec.dataset)),
            n_images=config_int(raw, "n_images", spec.n_images, where),
            targets=str(raw.get("targets", spec.targets)),
            fixed={**spec.fixed, **fixed},
            grid=_grid_from_raw(spec, raw["grid"], where) if "grid" in raw else spec.grid,
        )
        if "grid" not in raw:
            print(f"{where} sets no grid: the script's grid is used")
    if args.models:
        spec = dataclasses.replace(spec, models=tuple(args.models))
    if args.dataset:
        spec = dataclasses.replace(spec, dataset=args.dataset)
    if args.n_images is not None:
        spec = dataclasses.replace(spec, n_images=args.n_images)
    if args.targets:
        spec = dataclasses.replace(spec, targets=args.targets)
    for name in options(attack_class(spec.attack)):
        given = getattr(args, f"opt_{name}", None)
        if given is None:
            continue
        values = [parse_option(spec.attack, name, v) for v in given]
        grid = tuple({k: v for k, v in sub.items() if k != name} for sub in spec.grid)
        fixed = {k: v for k, v in spec.fixed.items() if k != name}
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            grid = tuple({**sub, name: values} for sub in grid)
        spec = dataclasses.replace(spec, fixed=fixed, grid=grid)
    return spec


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
class GridSweep:
    """:class:`~stadv_sweeps.engine.runner.SweepPlan` of a grid sweep declared by
    :class:`SweepDefaults`."""

    report_script: str | None = "results"

    def __init__(self, defaults: SweepDefaults) -> None:
        self.defaults = defaults
        self.sweep = defaults.sweep
        self.script = defaults.sweep
        self.description = defaults.description

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_grid_arguments(parser, self.defaults.default.attack)

    def resolve(self, args: argparse.Namespace) -> SweepSpec:
        return resolve_spec(args, self.defaults)

    def from_json(self, raw: Mapping[str, Any]) -> SweepSpec:
        return SweepSpec.from_json(raw)

    def points(self, spec: SweepSpec) -> list[Point]:
        return build_points(spec)

    def parent_params(self, spec: SweepSpec) -> dict[str, Any]:
        params: dict[str, Any] = {
            "sweep": spec.sweep,
            "attack": spec.attack,
            "models": " ".join(spec.models),
            "dataset": spec.dataset,
            "n_images": spec.n_images,
            "targets": spec.targets,
            "smoke_test": spec.smoke,
        }
        params.update({f"base.{k}": v for k, v in base_options(spec).items()})
        return params

    def prepare_models(self, spec: SweepSpec, args: argparse.Namespace) -> dict[str, Any]:
        return prepare_models(spec.models, spec.dataset, spec.smoke, args.store, args.data_dir)

    def summary(self, parent: Any, df: Any) -> tuple[str, dict[str, float]]:
        text = report.summary_text(df, parent_base_options(parent))
        succ = success_column(df)
        best = {f"best_success_{m}": float(g[succ].max()) for m, g in df.groupby("model")}
        return text, best

    def log_summary(self, client: MlflowClient, parent: Any, df: Any) -> None:
        report.log_summary(client, parent, df)


def main(defaults: SweepDefaults, argv: Sequence[str] | None = None) -> int:
    """Run a grid sweep (exit status as :func:`stadv_sweeps.engine.runner.main`)."""
    return runner.main(GridSweep(defaults), argv)
