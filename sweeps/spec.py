"""A sweep's trials: the grid of stAdv options, its validation, and config files.

A grid sweep (``kappa_tau.py``, ``ablation.py``) is a :class:`SweepSpec`: models, data, target
protocol, the StAdv options held fixed and a union of sub-grids. :func:`build_points` turns it
into :class:`Point` s, one per trial, each validated by constructing its :class:`StAdv` (a bad
key or value raises :class:`SweepError` naming it, before anything runs). Command-line and
config-file values arrive as strings or YAML/TOML scalars; :func:`coerce_option` types them
from StAdv's annotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stadv.attack import StAdv
from stadv.data import DATASETS, check_dataset_name
from stadv.models import check_model_name
from stadv.targets import TARGET_PROTOCOLS

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
class SweepDefaults:
    """A grid script's own settings: its default grid and the tiny one of ``--smoke-test``."""

    sweep: str
    description: str
    default: SweepSpec
    smoke: SweepSpec


@dataclass(frozen=True)
class Point:
    """One trial: a model attacked with one attack's full, validated options.

    ``weights`` names the prepared model the trial attacks (a key of the driver's model
    bundles; empty: ``model`` itself); ``params`` are further run parameters naming the trial
    (the defense sweep's attack and defense). Grid sweeps leave both empty.
    """

    model: str
    options: dict[str, Any]
    key: str
    label: str
    attack: str = "stadv"
    weights: str = ""
    params: dict[str, str] = field(default_factory=dict)


def settable_options() -> dict[str, dataclasses.Field[Any]]:
    """StAdv's fields a sweep may set (every one but the device)."""
    return {f.name: f for f in dataclasses.fields(StAdv) if f.name not in UNSETTABLE}


def option_kind(name: str) -> tuple[type, bool]:
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
    kind, allows_none = option_kind(name)
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


def check_common(models: tuple[str, ...], dataset: str, n_images: int, targets: str) -> list[str]:
    """The checks every sweep makes: the models (returned canonical), data set, image count
    and target protocol. Raises ``SweepError`` naming the bad value."""
    if not models:
        raise SweepError("no models to sweep")
    try:
        names = [check_model_name(m) for m in models]
        check_dataset_name(dataset)
    except ValueError as err:
        raise SweepError(str(err)) from None
    if n_images < 1:
        raise SweepError(f"n_images must be >= 1, got {n_images}")
    if targets not in TARGET_CHOICES:
        raise SweepError(f"unknown targets {targets!r}; allowed: {', '.join(TARGET_CHOICES)}")
    return names


def build_points(spec: SweepSpec) -> list[Point]:
    """The sweep's trials, validated, without duplicates, most expensive model first.

    Raises ``SweepError`` naming the model, option or value that is wrong.
    """
    models = check_common(spec.models, spec.dataset, spec.n_images, spec.targets)
    fixed = {k: coerce_option(k, v) for k, v in spec.fixed.items()}
    try:
        base = full_options(fixed)
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
                settings.append(full_options({**fixed, **combo}))
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
            changed = [f"{k}={fmt(options[k])}" for k in swept if options[k] != base[k]]
            label = " ".join([model, *(changed or ["base"])])
            points.append(Point(model=model, options=options, key=key, label=label))
    return points


def full_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every settable StAdv option, validated by StAdv itself (``ValueError`` naming a bad one)."""
    attack = StAdv(**options)
    return {k: v for k, v in attack.to_dict().items() if k not in UNSETTABLE}


def base_options(spec: SweepSpec) -> dict[str, Any]:
    """The base setting: every StAdv option at the spec's fixed value or its default."""
    return full_options({k: coerce_option(k, v) for k, v in spec.fixed.items()})


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------
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


def grid_from_raw(raw: Any, where: str) -> tuple[dict[str, list[Any]], ...]:
    """A config file's ``grid`` (one mapping or a list of them) as sub-grids of value lists."""
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
