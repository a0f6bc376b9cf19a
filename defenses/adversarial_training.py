"""Adversarial training: per-batch losses for :func:`stadv.train.train_model`'s ``loss_fn``.

Each loss crafts adversarial examples of the batch and mixes their cross-entropy with the clean
one, ``L = (1 - lambda) * CE(Z(x), y) + lambda * CE(Z(x_adv), y)`` (``adv_weight`` = lambda):

* :class:`FGSMAdversarialLoss`: Goodfellow et al. (ICLR 2015) as in Tramèr et al.'s
  ensemble adversarial training code (``train_adv.py``): FGSM with epsilon 0.3 on the model
  being trained, lambda = 0.5, and the gradient taken for the model's own predicted class
  instead of the true label (``gen_grad(..., loss="training")``: no label leaking, Kurakin et
  al. 2017); the adversarial loss uses the true labels.
* :class:`EnsembleAdversarialLoss`: Tramèr et al. (ICLR 2018, arXiv 1705.07204): the same,
  but each batch's FGSM examples come from a source drawn uniformly from the model being trained
  and static pre-trained models (``idx = np.random.randint(len(x_advs))`` in their code).
* :class:`PGDAdversarialLoss`: Madry et al. (ICLR 2018): 40 steps of 0.01 in the 0.3 L-inf ball
  from a random start, training on the adversarial examples only (lambda = 1).

Attack generation runs inside :func:`prepared_model` (eval mode, parameter gradients off,
both restored on exit), so dropout is off while crafting and the crafted examples carry no
graph; the losses themselves are evaluated in the caller's (training) mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import nn

from stadv.attack_base import loss_ascent_gradient
from stadv.model_mode import prepared_model
from stadv.models import MODELS, check_model_name
from stadv.options import check_bounds, check_choice, check_int, check_real
from stadv.pgd import PGD
from stadv.store import load_pretrained
from stadv.train import TrainLoss

__all__ = [
    "TRAINING_DEFENSES",
    "TRAINING_VARIANTS",
    "DefenseTraining",
    "EnsembleAdversarialLoss",
    "FGSMAdversarialLoss",
    "PGDAdversarialLoss",
    "TrainingDefense",
    "build_defense_training",
    "defense_variant",
    "fgsm_examples",
    "prepared_model",
]

TrainingDefense = Literal["none", "fgsm", "pgd", "ensemble"]
TRAINING_DEFENSES: tuple[str, ...] = get_args(TrainingDefense)

#: Store variant of each adversarially trained model: ``<dataset>-<model>-<variant>.pt``.
TRAINING_VARIANTS: dict[str, str] = {
    "none": "",
    "fgsm": "adv-fgsm",
    "pgd": "adv-pgd",
    "ensemble": "adv-ensemble",
}


def defense_variant(defense: str) -> str:
    """The store variant of an adversarial-training defense (``""`` for ``"none"``)."""
    return TRAINING_VARIANTS[check_choice("training defense", defense, TRAINING_DEFENSES)]


def fgsm_examples(
    model: nn.Module,
    images: torch.Tensor,
    *,
    epsilon: float,
    labels: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """FGSM examples ``clip(x + epsilon * sign(grad_x CE(Z(x), y')))``, detached.

    ``y'`` is ``labels`` when given, else the model's own prediction on ``images`` (Tramèr et
    al.'s training-time choice). Runs in eval mode with frozen parameters (restored after).
    """
    with prepared_model(model) as net:
        if labels is None:
            with torch.no_grad():
                labels = net(images).argmax(dim=1)
        grad = loss_ascent_gradient(net, images, labels, None)
    return (images.detach() + epsilon * grad.sign()).clamp(*bounds)


def _mix(
    model: nn.Module, images: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, weight: float
) -> torch.Tensor:
    adv_loss = F.cross_entropy(model(adv), labels)
    if weight == 1.0:
        return adv_loss
    return (1.0 - weight) * F.cross_entropy(model(images), labels) + weight * adv_loss


class _FGSMSettings(Protocol):
    @property
    def epsilon(self) -> float: ...
    @property
    def adv_weight(self) -> float: ...
    @property
    def use_predictions(self) -> bool: ...
    @property
    def bounds(self) -> tuple[float, float]: ...


def _fgsm_loss(
    settings: _FGSMSettings,
    source: nn.Module,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """The FGSM-family loss: examples crafted on ``source``, mixed on ``model`` (``_mix``)."""
    adv = fgsm_examples(
        source,
        images,
        epsilon=settings.epsilon,
        labels=None if settings.use_predictions else labels,
        bounds=settings.bounds,
    )
    return _mix(model, images, adv, labels, settings.adv_weight)


def _check_weight(adv_weight: float) -> None:
    check_real("adv_weight", adv_weight)
    if adv_weight > 1:
        raise ValueError(f"adv_weight must lie in [0, 1], got {adv_weight!r}")


def _check_fgsm_settings(settings: _FGSMSettings) -> None:
    """Checks epsilon, adv_weight and bounds (normalised in place on the frozen dataclass)."""
    check_real("epsilon", settings.epsilon)
    _check_weight(settings.adv_weight)
    object.__setattr__(settings, "bounds", check_bounds(settings.bounds))


@dataclass(frozen=True, kw_only=True)
class FGSMAdversarialLoss:
    """FGSM adversarial training loss (Goodfellow et al. 2015; Tramèr et al.'s settings).

    Args (keyword-only; defaults in brackets):
        epsilon: FGSM's L-inf step [0.3]. Finite, >= 0.
        adv_weight: lambda, the adversarial share of the loss [0.5: half clean, half adversarial].
        use_predictions: craft against the model's predicted class (True, default, no label
            leaking) or the true label (False).
        bounds: valid pixel range [(0.0, 1.0)].

    Example::

        >>> train_model(model, data, loss_fn=FGSMAdversarialLoss(epsilon=0.3))
    """

    epsilon: float = 0.3
    adv_weight: float = 0.5
    use_predictions: bool = True
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        _check_fgsm_settings(self)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return _fgsm_loss(self, model, model, images, labels)


@dataclass(frozen=True, kw_only=True)
class EnsembleAdversarialLoss:
    """Ensemble adversarial training loss (Tramèr et al. 2018).

    Per batch, the FGSM source is drawn uniformly from ``[model being trained, *static_models]``
    with torch's global generator (seeded by the training loop). Static models are never
    updated: they are used in eval mode with frozen parameters, and moved to the batch's device.

    Args (keyword-only; defaults in brackets):
        static_models: the pre-trained models (at least one), typically other architectures.
        epsilon [0.3], adv_weight [0.5], use_predictions [True], bounds [(0, 1)]: as
            :class:`FGSMAdversarialLoss`.
    """

    static_models: tuple[nn.Module, ...]
    epsilon: float = 0.3
    adv_weight: float = 0.5
    use_predictions: bool = True
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        models = tuple(self.static_models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError(
                "static_models must be a non-empty sequence of nn.Module, "
                f"got {self.static_models!r}"
            )
        object.__setattr__(self, "static_models", models)
        _check_fgsm_settings(self)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        source_index = int(torch.randint(len(self.static_models) + 1, (1,)))
        source = (
            model if source_index == 0 else self.static_models[source_index - 1].to(images.device)
        )
        return _fgsm_loss(self, source, model, images, labels)


@dataclass(frozen=True, kw_only=True)
class PGDAdversarialLoss:
    """PGD adversarial training loss (Madry et al. 2018).

    Args (keyword-only; defaults in brackets, Madry et al.'s MNIST settings):
        epsilon: L-inf radius [0.3]. alpha: step size [0.01]. steps: PGD steps [40].
        random_start: uniform start in the ball [True], drawn from torch's global generator
            (seeded by the training loop).
        adv_weight: lambda [1.0: adversarial examples only].
        bounds: valid pixel range [(0.0, 1.0)].
    """

    epsilon: float = 0.3
    alpha: float = 0.01
    steps: int = 40
    random_start: bool = True
    adv_weight: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon)
        check_real("alpha", self.alpha, strict=True)
        check_int("steps", self.steps, low=1)
        _check_weight(self.adv_weight)
        object.__setattr__(self, "bounds", check_bounds(self.bounds))

    @property
    def attack(self) -> PGD:
        return PGD(
            epsilon=self.epsilon,
            alpha=self.alpha,
            steps=self.steps,
            random_start=self.random_start,
            seed=None,
            bounds=self.bounds,
            check=False,
        )

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        adv = self.attack(model, images, labels).adv_images
        return _mix(model, images, adv, labels, self.adv_weight)


@dataclass(frozen=True)
class DefenseTraining:
    """What :func:`stadv.store.train_and_store` needs to train under one defense: ``loss_fn``
    (None: plain training), the store ``variant`` and ``extra`` details for the checkpoint's
    sidecar (``{"defense": name, "defense_params": {...}}``; empty for ``"none"``)."""

    loss_fn: TrainLoss | None = None
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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
) -> DefenseTraining:
    """The training loss, store variant and sidecar details of adversarial-training ``defense``.

    Args:
        defense: ``"none"`` (plain training), ``"fgsm"`` (:class:`FGSMAdversarialLoss`),
            ``"pgd"`` (:class:`PGDAdversarialLoss`) or ``"ensemble"``
            (:class:`EnsembleAdversarialLoss`).
        model_name: the model being trained ("A", "B", "C"); the ensemble's default static
            models are the other architectures.
        epsilon: L-inf budget of the training attack [0.3]. >= 0.
        adv_weight: lambda, the adversarial share of the loss, in [0, 1] [None: 0.5 for fgsm
            and ensemble, 1.0 for pgd].
        pgd_alpha: PGD's step size [0.01]. > 0. pgd_steps: PGD's steps [40]. >= 1.
        static_models: names of the pre-trained models crafting ensemble examples [None: every
            architecture but ``model_name``]; loaded from the store (``dataset``, ``store``,
            ``data_dir``, ``device``: as :func:`stadv.store.load_pretrained`; trained first if
            missing). Only ``"ensemble"`` loads them.
    Returns:
        A :class:`DefenseTraining`; ``extra["defense_params"]`` holds the loss's parameters
        (the static models by name).
    Raises:
        ValueError: an unknown defense or model, or a bad value (every argument is checked,
            whatever the defense, before any model is loaded).

    Example::

        >>> setup = build_defense_training("pgd", model_name="B", pgd_steps=7)
        >>> train_and_store("B", loss_fn=setup.loss_fn, variant=setup.variant, extra=setup.extra)
    """
    key = check_choice("defense", defense, TRAINING_DEFENSES)
    name = check_model_name(model_name)
    epsilon = check_real("epsilon", epsilon)
    if adv_weight is not None:
        _check_weight(adv_weight)
    alpha = check_real("pgd_alpha", pgd_alpha, strict=True)
    steps = check_int("pgd_steps", pgd_steps, low=1)
    if static_models is None:
        static = [m for m in MODELS if m != name]
    else:
        static = [check_model_name(s) for s in static_models]
        if not static:
            raise ValueError("static_models must name at least one model, got none")
    if key == "none":
        return DefenseTraining()
    loss: TrainLoss
    params: dict[str, Any]
    if key == "fgsm":
        fgsm = FGSMAdversarialLoss(
            epsilon=epsilon, adv_weight=0.5 if adv_weight is None else adv_weight
        )
        loss, params = fgsm, asdict(fgsm)
    elif key == "pgd":
        pgd = PGDAdversarialLoss(
            epsilon=epsilon,
            alpha=alpha,
            steps=steps,
            adv_weight=1.0 if adv_weight is None else adv_weight,
        )
        loss, params = pgd, asdict(pgd)
    else:
        models = tuple(
            load_pretrained(s, dataset=dataset, store=store, data_dir=data_dir, device=device)
            for s in static
        )
        ens = EnsembleAdversarialLoss(
            static_models=models,
            epsilon=epsilon,
            adv_weight=0.5 if adv_weight is None else adv_weight,
        )
        params = {k: v for k, v in asdict(ens).items() if k != "static_models"}
        params["static_models"] = static
        loss = ens
    return DefenseTraining(
        loss_fn=loss,
        variant=TRAINING_VARIANTS[key],
        extra={"defense": key, "defense_params": params},
    )
