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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from defenses.base import DefenseContext, Training, option_values, store_variant
from stadv.attack_base import loss_ascent_gradient
from stadv.model_mode import prepared_model
from stadv.models import MODELS, check_model_name
from stadv.options import check_bounds, check_int, check_real
from stadv.pgd import PGD
from stadv.train import TrainLoss

__all__ = [
    "EnsembleAdversarialLoss",
    "EnsembleTraining",
    "FGSMAdversarialLoss",
    "FGSMTraining",
    "PGDAdversarialLoss",
    "PGDTraining",
    "fgsm_examples",
    "prepared_model",
]


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


# ---------------------------------------------------------------------------------------------
# The adversarial-training defenses, as the registry (defenses.registry) builds them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _AdversarialTraining:
    """Options every adversarial-training defense shares: the training set and schedule."""

    epsilon: float = 0.3
    train_limit: int | None = None
    epochs: int | None = None
    seed: int = 0

    store_variant: ClassVar[str] = ""
    trains: ClassVar[bool] = True

    def _check(self) -> None:
        check_real("epsilon", self.epsilon)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, low=1)
        if self.epochs is not None:
            check_int("epochs", self.epochs, low=1)
        check_int("seed", self.seed, low=0)

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        return None

    def identity(self) -> dict[str, Any]:
        return option_values(self)

    def _training(
        self, make_loss: Callable[[], TrainLoss], params: dict[str, Any], ctx: DefenseContext
    ) -> Training:
        return Training(
            make_loss=make_loss,
            variant=store_variant(self, ctx.variant),  # type: ignore[arg-type]
            params=params,
            epochs=self.epochs,
            train_limit=self.train_limit,
            seed=self.seed,
        )


def _loss_params(loss: Any) -> dict[str, Any]:
    """A training loss's settings as the sidecar records them (the static models left out)."""
    return {
        f.name: getattr(loss, f.name) for f in dataclasses.fields(loss) if f.name != "static_models"
    }


@dataclass(frozen=True, kw_only=True)
class FGSMTraining(_AdversarialTraining):
    """FGSM adversarial training (:class:`FGSMAdversarialLoss`) from scratch:
    ``epsilon`` [0.3], ``adv_weight`` [0.5: half clean, half adversarial], ``train_limit``
    [None: all images], ``epochs`` [None: the model's recipe], ``seed`` [0]. Stored as ``<dataset>-<model>-adv-fgsm[-<variant>]``."""

    name: ClassVar[str] = "fgsm"
    label: ClassVar[str] = "FGSM-adv"
    store_variant: ClassVar[str] = "adv-fgsm"

    adv_weight: float = 0.5

    def __post_init__(self) -> None:
        self._check()
        _check_weight(self.adv_weight)

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        loss = FGSMAdversarialLoss(epsilon=self.epsilon, adv_weight=self.adv_weight)
        return self._training(lambda: loss, _loss_params(loss), ctx)


@dataclass(frozen=True, kw_only=True)
class EnsembleTraining(_AdversarialTraining):
    """Ensemble adversarial training (:class:`EnsembleAdversarialLoss`): FGSM examples from the
    model itself or one of ``static_models`` (undefended, pre-trained; None: the other
    architectures), plus the options of :class:`FGSMTraining`."""

    name: ClassVar[str] = "ensemble"
    label: ClassVar[str] = "ensemble-adv"
    store_variant: ClassVar[str] = "adv-ensemble"

    static_models: tuple[str, ...] | None = None
    adv_weight: float = 0.5

    def __post_init__(self) -> None:
        self._check()
        _check_weight(self.adv_weight)
        if self.static_models is not None:
            names = tuple(check_model_name(m) for m in self.static_models)
            if not names:
                raise ValueError("static_models must name at least one model")
            object.__setattr__(self, "static_models", names)

    def static_names(self, model: str) -> list[str]:
        """The static models for ``model`` (default: the other architectures)."""
        if self.static_models is not None:
            return list(self.static_models)
        return [m for m in MODELS if m != check_model_name(model)]

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        names = self.static_names(model)
        load = ctx.classifier

        def make_loss() -> TrainLoss:
            if load is None:
                raise ValueError("ensemble training needs a way to load its static models")
            return EnsembleAdversarialLoss(
                static_models=tuple(load(m) for m in names),
                epsilon=self.epsilon,
                adv_weight=self.adv_weight,
            )

        fgsm = FGSMAdversarialLoss(epsilon=self.epsilon, adv_weight=self.adv_weight)
        params = {**_loss_params(fgsm), "static_models": names}
        return self._training(make_loss, params, ctx)


@dataclass(frozen=True, kw_only=True)
class PGDTraining(_AdversarialTraining):
    """PGD adversarial training (:class:`PGDAdversarialLoss`): ``steps`` [40] of ``alpha``
    [0.01] in the ``epsilon`` ball, ``adv_weight`` [1.0: Madry et al.'s adversarial-only
    loss] of the loss on the adversarial examples, plus the options of :class:`FGSMTraining`."""

    name: ClassVar[str] = "pgd"
    label: ClassVar[str] = "PGD-adv"
    store_variant: ClassVar[str] = "adv-pgd"

    steps: int = 40
    alpha: float = 0.01
    adv_weight: float = 1.0

    def __post_init__(self) -> None:
        self._check()
        check_int("steps", self.steps, low=1)
        check_real("alpha", self.alpha, strict=True)
        _check_weight(self.adv_weight)

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        loss = PGDAdversarialLoss(
            epsilon=self.epsilon, alpha=self.alpha, steps=self.steps, adv_weight=self.adv_weight
        )
        return self._training(lambda: loss, _loss_params(loss), ctx)
