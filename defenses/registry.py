"""The defenses, by name: the one list ``stadv train --defense`` and the defense sweep read.

Each is a frozen dataclass of its options (:mod:`stadv.options`) implementing
:class:`defenses.base.Defense`. Adding a defense to the CLI, the defense sweep and its tables
is one module plus one line in :data:`DEFENSES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from defenses.adversarial_training import EnsembleTraining, FGSMTraining, PGDTraining
from defenses.base import DefenseContext, Training, from_settings
from defenses.blur import BlurDefense
from defenses.denoiser import DenoiserDefense
from defenses.distillation import DistillationDefense
from defenses.prototype import PCLPGDTraining, PCLTraining
from defenses.vae_defense import VAEDetectorDefense
from stadv.models import check_model_name
from stadv.options import check_choice, check_int, check_real
from stadv.train import Trainer, TrainLoss


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
    "distillation": DistillationDefense,
    "pcl": PCLTraining,
    "pcl-pgd": PCLPGDTraining,
    "vae": VAEDetectorDefense,
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


#: The defenses that train the classifier (``stadv train --defense``), ``"none"`` first: plain
#: training.
TRAINING_DEFENSES: tuple[str, ...] = ("none", *(n for n, c in DEFENSES.items() if c.trains))
#: Store variant of each adversarially trained model: ``<dataset>-<model>-<variant>.pt``.
TRAINING_VARIANTS: dict[str, str] = {n: DEFENSES[n].store_variant for n in TRAINING_DEFENSES}


def defense_variant(defense: str) -> str:
    """The store variant of a training defense (``""`` for ``"none"``); ``ValueError`` for any
    other name (a pre-processing defense trains no classifier)."""
    return TRAINING_VARIANTS[check_choice("training defense", defense, TRAINING_DEFENSES)]


@dataclass(frozen=True)
class DefenseTraining:
    """What :func:`stadv.store.train_and_store` needs to train under one defense: ``loss_fn``
    (None: plain training), the store ``variant``, ``extra`` details for the checkpoint's
    sidecar (``{"defense": name, "defense_params": {...}}``; empty for ``"none"``) and the
    ``trainer`` replacing :func:`stadv.train.train_model` (None: train_model)."""

    loss_fn: TrainLoss | None = None
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    trainer: Trainer | None = None


def build_defense_training(
    defense: str,
    *,
    model_name: str,
    epsilon: float = 0.3,
    adv_weight: float | None = None,
    pgd_alpha: float = 0.01,
    pgd_steps: int = 40,
    static_models: Sequence[str] | None = None,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    train_limit: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> DefenseTraining:
    """The training loss, store variant and sidecar details of training ``defense`` (one of
    :data:`TRAINING_DEFENSES`), built by the registry from flat settings
    (:func:`defenses.base.from_settings`: ``pgd_alpha``, ``pgd_steps`` are PGD's).

    Args:
        defense: ``"none"`` (plain training) or a defense that trains the classifier.
        model_name: the model being trained ("A", "B", "C"); the ensemble's default static
            models are the other architectures.
        epsilon: L-inf budget of the training attack [0.3]. >= 0.
        adv_weight: lambda, the adversarial share of the loss, in [0, 1] [None: the defense's
            default: 0.5 for fgsm and ensemble, 1.0 for pgd].
        pgd_alpha: PGD's step size [0.01]. > 0. pgd_steps: PGD's steps [40]. >= 1.
        static_models: names of the pre-trained models crafting ensemble examples [None: every
            architecture but ``model_name``]; loaded from the store (``dataset``, ``store``,
            ``data_dir``, ``device``: as :func:`stadv.store.load_pretrained`; trained first if
            missing). Only ``"ensemble"`` loads them.
        epochs [None: the model's recipe], train_limit [None: all], seed [0]: the training's,
            as :func:`stadv.store.train_and_store` gets them; the defenses that train further
            models with it (distillation's teacher) train those alike.
        options: further options by ``<defense>_<option>`` (``distillation_temperature``,
            ``pcl_warmup_epochs``, ``pcl-pgd_steps``) [None: the defenses' defaults].
    Raises:
        ValueError: an unknown defense or model, or a bad value (every argument is checked,
            whatever the defense, before any model is loaded).

    Example::

        >>> setup = build_defense_training("pgd", model_name="B", pgd_steps=7)
        >>> train_and_store("B", loss_fn=setup.loss_fn, variant=setup.variant, extra=setup.extra)
    """
    from stadv.store import load_pretrained

    key = check_choice("defense", defense, TRAINING_DEFENSES)
    name = check_model_name(model_name)
    check_real("epsilon", epsilon)
    if adv_weight is not None:
        check_real("adv_weight", adv_weight)
        if adv_weight > 1:
            raise ValueError(f"adv_weight must lie in [0, 1], got {adv_weight!r}")
    check_real("pgd_alpha", pgd_alpha, strict=True)
    check_int("pgd_steps", pgd_steps, low=1)
    static = None if static_models is None else tuple(check_model_name(s) for s in static_models)
    if static is not None and not static:
        raise ValueError("static_models must name at least one model, got none")
    if epochs is not None:
        check_int("epochs", epochs, low=1)
    if train_limit is not None:
        check_int("train_limit", train_limit, low=1)
    check_int("seed", seed, low=0)
    if key == "none":
        return DefenseTraining()
    flat: dict[str, Any] = {
        "epsilon": epsilon,
        "pgd_alpha": pgd_alpha,
        "pgd_steps": pgd_steps,
        "static_models": static,
        "epochs": epochs,
        "train_limit": train_limit,
        "seed": seed,
        **(options or {}),
    }
    if adv_weight is not None:
        flat["adv_weight"] = adv_weight
    made = from_settings(defense_class(key), flat)
    ctx = DefenseContext(
        dataset=dataset,
        store=store,
        data_dir=data_dir,
        device=device,
        classifier=lambda m: load_pretrained(
            m, dataset=dataset, store=store, data_dir=data_dir, device=device
        ),
    )
    recipe = made.training(name, ctx)
    return DefenseTraining(
        loss_fn=recipe.make_loss(),
        variant=recipe.variant,
        extra={"defense": key, "defense_params": recipe.params},
        trainer=recipe.trainer,
    )
