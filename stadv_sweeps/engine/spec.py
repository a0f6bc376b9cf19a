"""A sweep's trials: :class:`Point` s (a model and one validated attack each), their keys, the
checks every sweep makes, and config files.

A trial's attack is the attack object itself, a frozen dataclass of the library's registry
(:mod:`stadv.registry`), built and validated once, in the driver, from the plan's values
(:func:`stadv.options.build`): Ray pickles it to the worker as it is, and the worker calls it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stadv.data import check_dataset_name
from stadv.models import check_model_name
from stadv.options import build, options, parse_value
from stadv.registry import ATTACKS, attack_class
from stadv.targets import TARGET_CHOICES
from stadv_sweeps.engine.errors import SweepError

#: Relative attack cost of the models (multiply-adds per forward pass, about): trials run
#: most expensive first, so the last trials to finish are short ones (less idle tail).
MODEL_COST = {"A": 45.0, "C": 48.0, "B": 9.0}


@dataclass(frozen=True)
class Point:
    """One trial: a model attacked by one attack object.

    ``attack`` is an instance of a registered attack class (validated at construction);
    ``weights`` names the prepared model the trial attacks (a key of the driver's model
    bundles; empty: ``model`` itself); ``params`` are further run parameters naming the trial
    (the defense sweep's defense). ``key`` is a stable hash of everything that defines the
    trial's result; ``label`` says what differs from the sweep's base setting. ``views``:
    the trial logs the views of what the attack did inside the model (``views/``: the
    representation space, activation differences, Grad-CAM; a few seconds of plotting).
    """

    model: str
    attack: Any
    key: str
    label: str
    weights: str = ""
    params: dict[str, str] = field(default_factory=dict)
    views: bool = True

    @property
    def attack_name(self) -> str:
        return attack_name(self.attack)

    def options(self) -> dict[str, Any]:
        """The attack's options, typed (every one, defaults included)."""
        return attack_options(self.attack)

    def to_json(self) -> dict[str, Any]:
        """The trial as JSON (the parent run's record of the sweep)."""
        return {
            "model": self.model,
            "attack": self.attack_name,
            "options": self.options(),
            "key": self.key,
            "label": self.label,
            "weights": self.weights,
            "params": dict(self.params),
            "views": self.views,
        }


def attack_name(attack: Any) -> str:
    """The registry name of an attack object."""
    for name, cls in ATTACKS.items():
        if type(attack) is cls:
            return name
    raise SweepError(f"{type(attack).__name__} is not a registered attack")


def attack_options(attack: Any) -> dict[str, Any]:
    """Every option of an attack object (:func:`stadv.options.options`), typed."""
    return {name: getattr(attack, name) for name in options(type(attack))}


def make_attack(name: str, values: Mapping[str, Any], where: str = "") -> Any:
    """Attack ``name`` built from raw option values (strings, YAML scalars or typed values),
    each parsed by the attack's schema; ``SweepError`` naming the bad name, key or value."""
    try:
        return build(attack_class(name), values)
    except (ValueError, TypeError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "defaults"
        raise SweepError(f"{where}invalid {name} options ({shown}): {err}") from None


def parse_option(attack: str, name: str, value: Any, where: str = "") -> Any:
    """One raw value typed by attack ``attack``'s schema; ``SweepError`` naming it."""
    try:
        return parse_value(attack_class(attack), name, value)
    except ValueError as err:
        raise SweepError(f"{where}{err}") from None


#: Options left out of a trial key at these values: options added after sweeps had run, at the
#: default that reproduces those sweeps' CPU trials bit for bit (the precision policy's flags
#: are CUDA's; ``batching`` never changes a result), so their trials keep their keys and
#: resume; any other value enters the key.
KEY_NEUTRAL: dict[str, Any] = {"precision": "fp32", "batching": None}


def key_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """An attack's options as a trial key holds them: sorted, :data:`KEY_NEUTRAL` values out."""
    return {k: v for k, v in sorted(options.items()) if k not in KEY_NEUTRAL or KEY_NEUTRAL[k] != v}


def digest(ident: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-able mapping (trial keys)."""
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
    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        raise SweepError(f"n_images must be an integer >= 1, got {n_images!r}")
    if targets not in TARGET_CHOICES:
        raise SweepError(f"unknown targets {targets!r}; allowed: {', '.join(TARGET_CHOICES)}")
    return names


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def replace(spec: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for the frozen specs."""
    return dataclasses.replace(spec, **changes)


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str], keys: Mapping[str, str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) sweep config whose top-level keys
    must be among ``keys``; an unreadable, empty or malformed file is a ``SweepError`` naming
    it (an empty file would otherwise silently mean the script's default sweep)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SweepError(f"cannot read config file {path}: {err}") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SweepError(f"config file {path} is not valid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SweepError(f"config file {path} is not valid YAML: {err}") from None
    else:
        raise SweepError(f"config file {path} must end in .yaml, .yml or .toml")
    if raw is None or raw == {}:
        raise SweepError(
            f"config file {path} is empty: give at least one of {', '.join(keys)} "
            "(run the script without --config for its default sweep)"
        )
    if not isinstance(raw, dict):
        raise SweepError(f"config file {path} must hold a mapping at the top level")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise SweepError(
            f"config file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(keys)}"
        )
    return raw


def config_models(raw: Mapping[str, Any], default: tuple[str, ...], where: str) -> tuple[str, ...]:
    models = raw.get("models", default)
    if not isinstance(models, (list, tuple)) or not models:
        raise SweepError(f"{where}: 'models' must be a non-empty list, e.g. [A, B, C]")
    return tuple(str(m) for m in models)


def config_int(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SweepError(f"{where}: {key} must be an integer, got {value!r}")
    return value
