"""The one option schema (stadv.options) and the registries every command line and sweep read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from defenses.base import from_settings
from defenses.registry import DEFENSES
from stadv.attack import StAdv
from stadv.options import build, from_params, options, parse_value, to_params
from stadv.registry import ATTACKS


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_round_trips_through_string_params(name: str) -> None:
    cls = ATTACKS[name]
    assert cls.name == name and isinstance(cls.label, str) and cls.label
    default = cls()
    params = to_params(default)
    assert set(params) == set(options(cls)) and all(isinstance(v, str) for v in params.values())
    assert from_params(cls, params) == default
    assert "device" not in params  # set by the runtime, never an option


def test_changed_values_round_trip_too() -> None:
    attack = StAdv(tau=1e-4, kappa=0.5, wolfe="strong", init="gaussian", init_scale=0.02)
    assert from_params(StAdv, to_params(attack)) == attack


@pytest.mark.parametrize(
    ("option", "value"),
    [("solver", "bogus"), ("flow_loss", "eq6"), ("neighbours", "5"), ("padding", "mirror")],
)
def test_a_bad_choice_reads_the_same_from_the_schema_and_the_constructor(
    option: str, value: str
) -> None:
    with pytest.raises(ValueError) as from_schema:
        parse_value(StAdv, option, value)
    with pytest.raises(ValueError) as from_constructor:
        StAdv(**{option: value})
    assert str(from_schema.value) == str(from_constructor.value)
    assert repr(value) in str(from_schema.value) and "allowed:" in str(from_schema.value)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("check", "banana", "check='banana' is not a valid bool"),
        ("max_iterations", "ten", "max_iterations='ten' is not a valid int"),
        ("tau", "0.1x", "tau='0.1x' is not a valid float"),
        ("max_iterations", True, "is not a valid int"),
        ("history", [3], "is not a valid int"),
    ],
)
def test_bad_scalars_are_named(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_value(StAdv, option, value)


def test_values_from_command_lines_yaml_and_mlflow_are_typed() -> None:
    assert parse_value(StAdv, "pgtol", "1e-6") == 1e-6  # YAML reads 1e-6 as a string
    assert parse_value(StAdv, "max_iterations", 20.0) == 20
    assert parse_value(StAdv, "neighbours", 4) == "4"
    assert parse_value(StAdv, "wolfe", "None") is None
    assert parse_value(StAdv, "check", "false") is False
    attack = build(StAdv, {"tau": "0.1", "keep": "last", "restarts": "0"})
    assert (attack.tau, attack.keep, attack.restarts) == (0.1, "last", 0)


def test_choices_come_from_the_literals() -> None:
    opts = options(StAdv)
    assert opts["flow_loss"].choices == ("eq4", "eq5")
    assert opts["wolfe"].optional and opts["wolfe"].choices == ("strong", "weak")
    assert opts["solver"].kind == "choice" and "adam" in opts["solver"].choices


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_is_built_from_flat_settings_and_names_itself(name: str) -> None:
    cls = DEFENSES[name]
    assert cls.name == name and cls.label
    made = from_settings(cls, {})
    assert made == cls()
    json.dumps(made.identity())  # trial keys and store variants hash it
    assert (made.training("B", _context()) is not None) == cls.trains


def _context() -> Any:
    from defenses.base import DefenseContext

    return DefenseContext(classifier=None)
