"""The attacks, by name: the one list every command line and sweep reads.

Each attack is a frozen dataclass of hyper-parameters (its options: :mod:`stadv.options`)
called as ``attack(model, images, labels, targets=None) -> AttackResult``. Adding an attack to
the ``stadv attack`` command, to every sweep's attack axis and to the reports is one module
plus one line in :data:`ATTACKS`; each class carries its ``name`` and ``label``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from stadv.attack import StAdv
from stadv.cw import CarliniWagnerL2
from stadv.deepfool import DeepFool
from stadv.few_pixel import FewPixel
from stadv.fgsm import FGSM
from stadv.jsma import JSMA
from stadv.options import check_choice
from stadv.pgd import PGD
from stadv.result import AttackResult
from stadv.targets import TargetSpec


class Attack(Protocol):
    """What every registered attack is: hyper-parameters, called on a model and images."""

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult: ...


#: name -> attack class (the name is what the CLI's ``--attack`` and the sweeps take; each
#: class's ``name`` class variable, so the key and the class never disagree).
ATTACKS: dict[str, type[Any]] = {
    cls.name: cls for cls in (StAdv, FGSM, PGD, CarliniWagnerL2, DeepFool, JSMA, FewPixel)
}


def attack_class(name: str) -> type[Any]:
    """The attack class registered as ``name``; ``ValueError`` listing the known ones."""
    return ATTACKS[check_choice("attack", name, tuple(ATTACKS))]


def label(name: str) -> str:
    """How tables and figures name attack ``name`` (its class's ``label``: ``"stAdv"``,
    ``"FGSM"``, ``"PGD"``, ``"C&W"``)."""
    return str(attack_class(name).label)
