"""One option schema for every configurable object: attacks, defenses, training settings.

A configurable object is a frozen dataclass whose typed fields *are* its options: ``float``,
``int``, ``bool``, ``str``, a ``Literal[...]`` of strings (a choice), or any of these ``| None``.
Everything that takes options from outside reads them from here and nowhere else:

* :func:`options` lists a class's options (name, kind, choices, default, accepts None);
* :func:`parse_value` turns one raw value (a command-line string, a YAML/TOML scalar, an MLflow
  parameter read back) into the option's type, with a ``ValueError`` naming the option, the
  value and the allowed values;
* :func:`build` constructs the object from raw values (each parsed, then the class's own
  ``__post_init__`` checks ranges and combinations, once, at construction);
* :func:`to_params` / :func:`from_params` write an object as string parameters (MLflow) and
  read it back, equal to the original;
* :func:`add_option_flags` adds one command-line flag per option to an ``argparse`` parser.
  The flags collect strings; :func:`parse_value` types them, so a flag, a config file and a
  constructor call reject the same bad value with the same message.

A field is left out of the schema (set by the runtime, never by a user option) when its
``metadata`` has ``option=False``, e.g. ``device: str | None = field(default=None,
metadata={"option": False})``; so are fields whose type is not one of the kinds above (such
as a pair of pixel bounds).

The small validators used by ``__post_init__`` methods (:func:`check_choice`,
:func:`check_real`, :func:`check_int`, :func:`check_bounds`) live here too, so a bad value
reads the same whichever class rejects it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")

Kind = Literal["bool", "int", "float", "str", "choice"]
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# ---------------------------------------------------------------------------------------------
# Validators
# ---------------------------------------------------------------------------------------------
def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` as one of ``allowed`` (ints are compared as strings: ``4`` is ``"4"``); else
    ``ValueError`` naming the option, the value and the allowed values."""
    key = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if key is None or key not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return key


def check_real(name: str, value: object, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` when ``strict``); else ``ValueError``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value > low or (value == low and not strict):
            return float(value)
    raise ValueError(
        f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
    )


def check_int(name: str, value: object, *, low: int) -> int:
    """``value`` as an int ``>= low`` (bools refused); else ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_bounds(bounds: object) -> tuple[float, float]:
    """``bounds`` as a pair of finite floats ``(low, high)`` with ``low < high``."""
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")
    lo, hi = bounds
    for v in (lo, hi):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"bounds must be finite numbers, got {bounds!r}")
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option of a configurable class: its name, kind, allowed values and default."""

    name: str
    kind: Kind
    default: Any
    choices: tuple[str, ...] = ()
    optional: bool = False  # accepts None
    #: how a command line or config spells None (field metadata ``none``, e.g. ``"all"``)
    none_word: str = "None"
    #: the command-line flag (field metadata ``flag``; default ``--<name>``)
    flag_name: str = ""

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What the option accepts, in words."""
        kinds = {
            "bool": "true or false",
            "int": "a whole number",
            "float": "a number",
            "str": "text",
        }
        what = f"one of {', '.join(self.choices)}" if self.kind == "choice" else kinds[self.kind]
        if self.optional:
            what += f" or {self.none_word!r}"
        return what

    def help(self) -> str:
        """A short help text: what it accepts and the default."""
        default = self.none_word if self.default is None else self.default
        return f"{self.describe()} (default {default})"


def _kind_of(hint: Any) -> tuple[Kind, tuple[str, ...], bool] | None:
    """(kind, choices, optional) of a type hint, or None when it is no option type."""
    optional = False
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        if len(args) != 1:
            return None
        hint = args[0]
    if get_origin(hint) is Literal:
        values = get_args(hint)
        if not values or not all(isinstance(v, str) for v in values):
            return None
        return "choice", tuple(values), optional
    names: dict[Any, Kind] = {bool: "bool", int: "int", float: "float", str: "str"}
    kind = names.get(hint)
    return None if kind is None else (kind, (), optional)


def options(cls: type) -> dict[str, Option]:
    """The options of dataclass ``cls``, in field order (see the module docstring)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("option", True) is False:
            continue
        kind = _kind_of(hints[f.name])
        if kind is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out[f.name] = Option(
            f.name,
            kind[0],
            default,
            kind[1],
            kind[2],
            none_word=str(f.metadata.get("none", "None")),
            flag_name=str(f.metadata.get("flag", "")),
        )
    return out


def option(cls: type, name: str) -> Option:
    """Option ``name`` of ``cls``; ``ValueError`` listing the known ones."""
    known = options(cls)
    if name not in known:
        raise ValueError(
            f"unknown {cls.__name__} option {name!r}; known options: {', '.join(known)}"
        )
    return known[name]


def parse_value(cls: type, name: str, value: Any) -> Any:
    """``value`` (a string from a command line or an MLflow parameter, or a YAML/TOML scalar) as
    the type of option ``name`` of ``cls``.

    Raises ``ValueError`` naming the option, the value and what it accepts. Range and
    combination checks are the class's own (at construction, :func:`build`).
    """
    opt = option(cls, name)
    if value is None or (isinstance(value, str) and value == opt.none_word and opt.optional):
        if opt.optional:
            return None
        raise ValueError(f"{cls.__name__} option {name} cannot be None")
    bad = ValueError(
        f"{cls.__name__} option {name}={value!r} is not a valid {opt.kind}: expected "
        f"{opt.describe()}, got {value!r}"
    )
    if opt.kind == "choice":
        return check_choice(name, value, opt.choices)
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise bad
    if isinstance(value, bool) or isinstance(value, (dict, list, tuple)):
        raise bad
    if opt.kind == "int":
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
    if opt.kind == "float":
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                raise bad from None
        raise bad
    if not isinstance(value, (str, int, float)):
        raise bad
    return str(value)


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)`` with every value parsed by :func:`parse_value` first."""
    return cls(**{k: parse_value(cls, k, v) for k, v in values.items()})


def to_params(obj: Any) -> dict[str, str]:
    """Every option of ``obj`` as a string (``None`` as ``"None"``; floats in ``repr`` form, so
    :func:`from_params` reads back the same value)."""
    out = {}
    for name in options(type(obj)):
        value = getattr(obj, name)
        out[name] = repr(value) if isinstance(value, float) else str(value)
    return out


def from_params(cls: type[T], params: Mapping[str, str]) -> T:
    """The object that :func:`to_params` wrote (parameters of other names are ignored)."""
    known = options(cls)
    return build(cls, {k: v for k, v in params.items() if k in known})


def changed(obj: Any) -> dict[str, Any]:
    """The options of ``obj`` that differ from their defaults."""
    return {
        name: getattr(obj, name)
        for name, opt in options(type(obj)).items()
        if getattr(obj, name) != opt.default
    }


# ---------------------------------------------------------------------------------------------
# Command-line flags
# ---------------------------------------------------------------------------------------------
def add_option_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    opts: Mapping[str, Option],
    *,
    dest_prefix: str,
    many: bool = False,
    owner: str = "",
    flag_names: Mapping[str, str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per option (``--tau``, ``--flow-loss``...), collecting strings in
    ``args.<dest_prefix><name>`` (None when absent; a list when ``many``). Type them with
    :func:`parse_value` (or :func:`given_options`), which names a bad value.

    ``flag_names`` renames an option's flag (e.g. ``--fgsm-epsilon`` when several classes'
    options share one parser); ``aliases`` adds further spellings of it."""
    flag_names = flag_names or {}
    aliases = aliases or {}
    for name, opt in opts.items():
        text = opt.help()
        if owner:
            text = f"{owner}: {text}"
        flags = [flag_names.get(name, opt.flag), *aliases.get(name, ())]
        parser.add_argument(
            *flags,
            dest=f"{dest_prefix}{name}",
            default=None,
            nargs="+" if many else None,
            metavar="V",
            help=text,
        )


def given_options(cls: type, args: argparse.Namespace, *, dest_prefix: str) -> dict[str, Any]:
    """The options of ``cls`` given on the command line (see :func:`add_option_flags`), typed:
    a value or, for ``many`` flags, a list of values."""
    out: dict[str, Any] = {}
    for name in options(cls):
        raw = getattr(args, f"{dest_prefix}{name}", None)
        if raw is None:
            continue
        if isinstance(raw, list):
            out[name] = [parse_value(cls, name, v) for v in raw]
        else:
            out[name] = parse_value(cls, name, raw)
    return out
