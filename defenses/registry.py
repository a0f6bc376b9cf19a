"""The defenses, by name: the one list ``stadv train --defense`` and the defense sweep read.

Each is a frozen dataclass of its options (:mod:`stadv.options`) implementing
:class:`defenses.base.Defense`. Adding a defense to the CLI, the defense sweep and its tables
is one module plus one line in :data:`DEFENSES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from defenses.adversarial_training import EnsembleTraining, FGSMTraining, PGDTraining
from defenses.base import DefenseContext, Training
from defenses.blur import BlurDefense
from defenses.denoiser import DenoiserDefense
from stadv.options import check_choice


@dataclass(frozen=True, kw_only=True)
class NoDefense:
    """The undefended classifier (the baseline row of every defense table)."""

    name: ClassVar[str] = "none"
    label: ClassVar[str] = "undefended"
    store_variant: ClassVar[str] = ""
    trains: ClassVar[bool] = False

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        return None

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        return None

    def identity(self) -> dict[str, Any]:
        return {}


#: name -> defense class, in the order tables list them.
DEFENSES: dict[str, type[Any]] = {
    "none": NoDefense,
    "fgsm": FGSMTraining,
    "ensemble": EnsembleTraining,
    "pgd": PGDTraining,
    "blur": BlurDefense,
    "denoiser": DenoiserDefense,
}


def defense_class(name: str) -> type[Any]:
    """The defense class registered as ``name``; ``ValueError`` listing the known ones."""
    return DEFENSES[check_choice("defense", name, tuple(DEFENSES))]


def trains_classifier(name: str) -> bool:
    """Whether defense ``name`` trains its own classifier (adversarial training)."""
    return bool(defense_class(name).trains)


def label(name: str) -> str:
    """How tables name defense ``name``."""
    return str(defense_class(name).label)
