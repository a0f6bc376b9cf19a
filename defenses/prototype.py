"""Prototype conformity loss (Mustafa, Khan, Hayat, Goecke, Shen & Shao, ICCV 2019, "Adversarial
Defense by Restricting the Hidden Space of Deep Neural Networks", arXiv 1904.00887).

Each class k has a learnable centroid ``w_k^l`` in the feature space of layer l; features are
pulled to their class's centroid and pushed from the others', so the classes occupy small,
separated regions that a small perturbation cannot cross. For a sample (x, y) with K classes
and features ``f_l(x)`` at the chosen layers (the paper's Eq. 3, with the contrastive part
weighted as in the authors' code)::

    L(x, y) = CE(Z(x), y) + sum_l [ lambda * ||f_l(x) - w_y^l||^2
              - gamma / (K - 1) * sum_{j != y} (||f_l(x) - w_j^l||^2 + ||w_y^l - w_j^l||^2) ]

with ``lambda`` = ``prox_weight`` [1.0] and ``gamma`` = ``conprox_weight`` [1e-4, the authors'
``--weight-conprox``], averaged over the batch. Training starts with a cross-entropy warm-up
(the authors fine-tune a softmax-trained network), then optimises the network and the centroids
together; with ``adversarial`` (a :class:`defenses.adversarial_training.PGDAdversarialLoss`)
each batch's PGD examples, crafted on the cross-entropy, are added to it (clean and adversarial
rows together), as in the authors' PGD variant.

Layers: the penultimate features (the output of the layer feeding the last ``nn.Linear``) and
one earlier layer (the one feeding the last ``nn.Conv2d``), by default, taken before any
dropout so that training pulls the features the model uses at test time; 4-D feature maps are averaged over their
spatial positions, giving one C-dimensional vector per layer. The paper instead adds auxiliary
branches (global pooling + FC) to a ResNet; pooling without new layers keeps the trained
classifier exactly the stored architecture.

**The centroids are parameters that must be optimised with the network.**
:func:`stadv.train.train_model` builds its Adam optimiser from ``model.parameters()``, so the
centroids live in :class:`PrototypeModel`, an ``nn.Module`` that wraps the classifier, owns one
``nn.Parameter`` per layer, and returns the classifier's logits; training it trains both. The
authors give the centroids their own optimiser and a much larger learning rate (SGD, 0.5 against
the network's 0.01); one Adam optimiser gets the same effect from a reparametrisation,
``w = centroid_lr_scale * theta`` with ``theta`` the parameter: Adam's steps on ``theta`` are
about ``lr``, so the centroids move about ``centroid_lr_scale * lr`` per step [10x]. The PCL
phase runs at ``pcl_lr`` [1e-4], a tenth of the warm-up's rate: measured on Model B (512
images), at 1e-3 Adam's first steps on the new loss raised it (eval mode, whole set) from 5.3 to
10, at 1e-4 it falls. :class:`PrototypeConformityLoss` only accepts a :class:`PrototypeModel`.
Attack or store ``PrototypeModel.classifier``, the plain logits model (or the wrapper itself:
same logits). The centroids start at the class means of the warmed-up features (the authors
draw them at random: means start the pull where the features are).

As registered defenses (:class:`PCLTraining` ``pcl``, :class:`PCLPGDTraining` ``pcl-pgd``;
``stadv train --defense pcl``, the defense sweep's rows) the whole schedule runs as the
store's trainer (:class:`PCLTrainer`) and the stored classifier is the plain A/B/C model
``PrototypeModel.classifier``: the centroids are not kept. The defended model classifies with
its own logits (the paper's too: the softmax layer, not the nearest centroid), so nothing at
test time reads them; they only shape the features during training. Keeping the stored model
the plain architecture lets every loader, attack and sweep use it unchanged.

Example::

    >>> pcl, report = train_pcl("B", train, warmup_epochs=3, epochs=3, seed=0)
    >>> pcl.classifier(images)            # logits; pcl.centroids[0]: (10, 128)
    >>> adv_pcl, _ = train_pcl("B", train, adversarial=PGDAdversarialLoss(steps=10))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from defenses.adversarial_training import PGDAdversarialLoss
from defenses.base import DefenseContext, Training, option_values, store_variant
from stadv.data import TensorData
from stadv.models import NUM_CLASSES, build_model, check_model_name
from stadv.options import check_int, check_real
from stadv.train import DEFAULT_BATCH_SIZE, DEFAULT_LR, TrainLoss, TrainReport, train_model

DEFAULT_PROX_WEIGHT = 1.0
#: The authors' ``--weight-conprox``.
DEFAULT_CONPROX_WEIGHT = 1e-4
DEFAULT_CENTROID_LR_SCALE = 10.0
DEFAULT_PCL_LR = 1e-4

__all__ = [
    "DEFAULT_CENTROID_LR_SCALE",
    "DEFAULT_CONPROX_WEIGHT",
    "DEFAULT_PCL_LR",
    "DEFAULT_PROX_WEIGHT",
    "PCLPGDTraining",
    "PCLReport",
    "PCLTrainer",
    "PCLTraining",
    "PrototypeConformityLoss",
    "PrototypeModel",
    "default_feature_layers",
    "prototype_conformity",
    "train_pcl",
]


def default_feature_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules whose *outputs* are the features, for an ``nn.Sequential``: the
    penultimate features (the layer feeding the last ``nn.Linear``) and an earlier feature map
    (the layer feeding the last ``nn.Conv2d``), in that order. ``Dropout`` and ``Flatten`` in
    between are skipped, so the features are the same in training and in eval mode.

    Models A, B, C: A ``("7", "1")`` (128-d hidden layer; 64-channel map), B ``("6", "4")``
    (128-d; 128-channel 5x5 map), C ``("7", "1")`` (128-d; 128-channel map).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"default feature layers need an nn.Sequential, got {type(model).__name__}: "
            "name the feature layers explicitly"
        )
    layers = list(model.named_children())

    def feeding(kind: type[nn.Module]) -> list[str]:
        at = [i for i, (_, m) in enumerate(layers) if isinstance(m, kind)]
        if not at:
            return []
        i = at[-1] - 1
        while i >= 0 and isinstance(layers[i][1], (nn.Dropout, nn.Flatten)):
            i -= 1
        return [layers[i][0]] if i >= 0 else []

    names = feeding(nn.Linear)
    if not names:
        raise ValueError("the model has no layer feeding an nn.Linear: name the feature layers")
    return (*names, *(n for n in feeding(nn.Conv2d) if n not in names))


class PrototypeModel(nn.Module):
    """A classifier with learnable class centroids on some of its feature layers.

    Args:
        classifier: the logits model (trained in place).
        feature_layers: names (``named_modules``) of the modules whose outputs are the
            features [:func:`default_feature_layers`].
        num_classes: K [10].
        image_shape: (C, H, W) of one input, to size the centroids [(1, 28, 28)].
        centroid_lr_scale: the centroids' step size relative to the network's under Adam
            [10.0]. > 0.

    ``forward(x)`` returns the classifier's logits; :meth:`features` also returns the features
    (N, D_l) per layer. ``centroids``: the centroids (K, D_l) per layer, zero until
    :meth:`init_centroids`, ``centroid_lr_scale`` times the parameters ``raw_centroids``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        feature_layers: Sequence[str] | None = None,
        num_classes: int = NUM_CLASSES,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        centroid_lr_scale: float = DEFAULT_CENTROID_LR_SCALE,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, low=2)
        self.centroid_lr_scale = check_real("centroid_lr_scale", centroid_lr_scale, strict=True)
        self.classifier = classifier
        layers = tuple(
            default_feature_layers(classifier) if feature_layers is None else feature_layers
        )
        modules = dict(classifier.named_modules())
        unknown = [name for name in layers if name not in modules]
        if not layers or unknown:
            raise ValueError(
                f"feature_layers {list(layers)!r} must name modules of the classifier; "
                f"unknown: {unknown!r}, known: {[n for n in modules if n]!r}"
            )
        self.feature_layers = layers
        self.num_classes = num_classes
        device = next(classifier.parameters()).device
        was_training = classifier.training
        classifier.eval()
        with torch.no_grad():
            _, feats = self.features(torch.zeros(1, *image_shape, device=device))
        classifier.train(was_training)
        self.raw_centroids = nn.ParameterList(
            nn.Parameter(torch.zeros(num_classes, f.shape[1], device=device)) for f in feats
        )

    @property
    def centroids(self) -> list[torch.Tensor]:
        """The centroids (K, D_l) per layer (differentiable in ``raw_centroids``)."""
        return [self.centroid_lr_scale * c for c in self.raw_centroids]

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, [f_l])``: the logits (N, K) and each layer's features (N, D_l)."""
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.classifier.named_modules())

        def hook_for(
            name: str,
        ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
            def hook(
                module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor
            ) -> None:
                captured[name] = out

            return hook

        handles = [modules[n].register_forward_hook(hook_for(n)) for n in self.feature_layers]
        try:
            logits: torch.Tensor = self.classifier(images)
        finally:
            for h in handles:
                h.remove()
        feats = []
        for name in self.feature_layers:
            f = captured[name]
            feats.append(f.flatten(2).mean(dim=2) if f.dim() > 2 else f.flatten(1))
        return logits, feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(images)
        return out

    def init_centroids(self, data: TensorData, *, batch_size: int = 1000) -> None:
        """Set each class's centroids to the mean features of its images in ``data`` (eval
        mode, no gradients); a class without images keeps its centroid."""
        check_int("batch_size", batch_size, low=1)
        device = self.raw_centroids[0].device
        sums = [torch.zeros_like(c) for c in self.raw_centroids]
        counts = torch.zeros(self.num_classes, device=device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for s in range(0, len(data), batch_size):
                x = data.images[s : s + batch_size].to(device)
                y = data.labels[s : s + batch_size].to(device)
                _, feats = self.features(x)
                for acc, f in zip(sums, feats, strict=True):
                    acc.index_add_(0, y, f)
                counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
            have = counts > 0
            for c, acc in zip(self.raw_centroids, sums, strict=True):
                c[have] = acc[have] / counts[have].unsqueeze(1) / self.centroid_lr_scale
        self.train(was_training)


def prototype_conformity(
    features: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    *,
    prox_weight: float = DEFAULT_PROX_WEIGHT,
    conprox_weight: float = DEFAULT_CONPROX_WEIGHT,
) -> torch.Tensor:
    """The prototype-conformity term of one layer, averaged over the batch (scalar)::

        lambda * ||f - w_y||^2 - gamma / (K - 1) * sum_{j != y} (||f - w_j||^2 + ||w_y - w_j||^2)

    ``features`` (N, D), ``labels`` (N,), ``centroids`` (K, D). Differentiable in the features
    and the centroids.
    """
    k = centroids.shape[0]
    d_feat = torch.cdist(features, centroids).pow(2)  # (N, K)
    d_cent = torch.cdist(centroids, centroids).pow(2)[labels]  # (N, K): ||w_y - w_j||^2
    own = d_feat.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = (d_feat + d_cent).sum(dim=1) - own  # d_cent's own entry is 0
    return (prox_weight * own - conprox_weight / (k - 1) * others).mean()


@dataclass(frozen=True, kw_only=True)
class PrototypeConformityLoss:
    """Cross-entropy plus the prototype conformity terms of every feature layer (a
    :class:`stadv.train.TrainLoss` for a :class:`PrototypeModel`).

    Args (keyword-only; defaults in brackets):
        prox_weight: lambda, the pull to the own centroid [1.0]. >= 0.
        conprox_weight: gamma, the push from the other centroids [1e-4]. >= 0.
        ce_weight: weight of the cross-entropy [1.0]. >= 0.
        adversarial: PGD settings for the adversarial variant [None: clean images only]; the
            PGD examples (crafted on the cross-entropy, model in eval mode with frozen
            parameters, :func:`stadv.model_mode.prepared_model`) are appended to the batch,
            clean and adversarial rows weighted alike as in the authors' code: only the
            attack's settings (``epsilon``, ``alpha``, ``steps``, ``random_start``, ``bounds``)
            are used, ``adv_weight`` is not.
    """

    prox_weight: float = DEFAULT_PROX_WEIGHT
    conprox_weight: float = DEFAULT_CONPROX_WEIGHT
    ce_weight: float = 1.0
    adversarial: PGDAdversarialLoss | None = None

    def __post_init__(self) -> None:
        check_real("prox_weight", self.prox_weight)
        check_real("conprox_weight", self.conprox_weight)
        check_real("ce_weight", self.ce_weight)
        if self.adversarial is not None and not isinstance(self.adversarial, PGDAdversarialLoss):
            raise ValueError(
                f"adversarial must be a PGDAdversarialLoss or None, got {self.adversarial!r}"
            )

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        if not isinstance(model, PrototypeModel):
            raise TypeError(
                "PrototypeConformityLoss trains a PrototypeModel (its centroids are parameters "
                f"the optimiser must see), got {type(model).__name__}"
            )
        if self.adversarial is not None:
            adv = self.adversarial.attack(model, images, labels).adv_images
            images = torch.cat([images, adv])
            labels = torch.cat([labels, labels])
        logits, feats = model.features(images)
        loss = self.ce_weight * F.cross_entropy(logits, labels)
        for f, c in zip(feats, model.centroids, strict=True):
            loss = loss + prototype_conformity(
                f,
                labels,
                c,
                prox_weight=self.prox_weight,
                conprox_weight=self.conprox_weight,
            )
        return loss


@dataclass(frozen=True)
class PCLReport:
    """What :func:`train_pcl` did: the warm-up (None when skipped) and the PCL training."""

    warmup: TrainReport | None
    pcl: TrainReport
    adversarial: bool


def train_pcl(
    model_name: str,
    train: TensorData,
    *,
    warmup_epochs: int = 3,
    epochs: int = 3,
    prox_weight: float = DEFAULT_PROX_WEIGHT,
    conprox_weight: float = DEFAULT_CONPROX_WEIGHT,
    adversarial: PGDAdversarialLoss | None = None,
    feature_layers: Sequence[str] | None = None,
    classifier: nn.Module | None = None,
    centroid_lr_scale: float = DEFAULT_CENTROID_LR_SCALE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    pcl_lr: float = DEFAULT_PCL_LR,
    seed: int = 0,
    device: torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> tuple[PrototypeModel, PCLReport]:
    """Train architecture ``model_name`` with the prototype conformity loss.

    ``warmup_epochs`` of cross-entropy (clean images), then centroids at the class means of
    the features (:meth:`PrototypeModel.init_centroids`), then ``epochs`` of
    :class:`PrototypeConformityLoss` (with PGD examples when ``adversarial`` is given), network
    and centroids together, both with :func:`stadv.train.train_model` (Adam).

    Args (keyword-only after ``train``; defaults in brackets):
        warmup_epochs: cross-entropy epochs [3]; 0 skips the warm-up (e.g. with ``classifier``).
        epochs: PCL epochs [3]. >= 1.
        prox_weight [1.0], conprox_weight [1e-4], adversarial [None]: as
            :class:`PrototypeConformityLoss`.
        feature_layers, centroid_lr_scale [10.0]: as :class:`PrototypeModel` [the penultimate
            features and the map feeding the last convolution].
        classifier: start from this (e.g. already trained) model of architecture ``model_name``
            instead of a fresh one (trained in place) [None].
        lr: Adam's rate in the warm-up [1e-3]; pcl_lr: in the PCL phase [1e-4].
        batch_size [64], seed [0], device [CPU], max_batches [all], progress [False]: as
            :func:`stadv.train.train_model`; ``seed`` also initialises the model.

    Returns:
        ``(model, report)``: the :class:`PrototypeModel` in eval mode (``model.classifier`` is
        the defended logits model) and a :class:`PCLReport`.
    """
    check_int("warmup_epochs", warmup_epochs, low=0)
    check_int("epochs", epochs, low=1)
    loss = PrototypeConformityLoss(
        prox_weight=prox_weight, conprox_weight=conprox_weight, adversarial=adversarial
    )
    if len(train) == 0:
        raise ValueError("cannot train on an empty data set")
    dev = device or torch.device("cpu")
    if classifier is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = build_model(model_name)
    classifier.to(dev)
    c, h, w = (int(d) for d in train.images.shape[1:])
    model = PrototypeModel(
        classifier,
        feature_layers=feature_layers,
        image_shape=(c, h, w),
        centroid_lr_scale=centroid_lr_scale,
    )
    warm: TrainReport | None = None
    if warmup_epochs:
        warm = train_model(
            classifier,
            train,
            epochs=warmup_epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=dev,
            max_batches=max_batches,
            progress=progress,
        )
    model.init_centroids(train)
    report = train_model(
        model,
        train,
        epochs=epochs,
        batch_size=batch_size,
        lr=pcl_lr,
        seed=seed + 1,
        device=dev,
        loss_fn=loss,
        max_batches=max_batches,
        progress=progress,
    )
    return model.eval(), PCLReport(warmup=warm, pcl=report, adversarial=adversarial is not None)


# ---------------------------------------------------------------------------------------------
# The defenses, as the registry (defenses.registry) builds them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PCLTrainer:
    """:func:`train_pcl` as the store's trainer (a :class:`stadv.train.Trainer`): trains the
    model :func:`stadv.store.train_and_store` built, in place; ``epochs`` is the PCL phase's.

    Fields: ``model_name``, ``warmup_epochs``, ``prox_weight``, ``conprox_weight``, ``lr``
    (the PCL phase's Adam rate; the warm-up runs at 1e-3) and ``adversarial``, as
    :func:`train_pcl`.
    """

    model_name: str
    warmup_epochs: int = 3
    prox_weight: float = DEFAULT_PROX_WEIGHT
    conprox_weight: float = DEFAULT_CONPROX_WEIGHT
    lr: float = DEFAULT_PCL_LR
    adversarial: PGDAdversarialLoss | None = None

    def __call__(
        self,
        model: nn.Module,
        data: TensorData,
        *,
        epochs: int,
        lr_decay_epochs: int,
        seed: int,
        device: torch.device | None,
        loss_fn: TrainLoss | None,
        progress: bool,
    ) -> TrainReport:
        if lr_decay_epochs:
            raise ValueError(
                "the prototype conformity training has no learning-rate decay: "
                f"lr_decay_epochs must be 0, got {lr_decay_epochs}"
            )
        if loss_fn is not None:
            raise ValueError(f"PCLTrainer brings its own loss; got loss_fn={loss_fn!r}")
        _, report = train_pcl(
            self.model_name,
            data,
            warmup_epochs=self.warmup_epochs,
            epochs=epochs,
            prox_weight=self.prox_weight,
            conprox_weight=self.conprox_weight,
            adversarial=self.adversarial,
            classifier=model,
            pcl_lr=self.lr,
            seed=seed,
            device=device,
            progress=progress,
        )
        warm = report.warmup
        return TrainReport(
            epochs=self.warmup_epochs + epochs,
            seconds=report.pcl.seconds + (warm.seconds if warm else 0.0),
            final_loss=report.pcl.final_loss,
            losses=(warm.losses if warm else ()) + report.pcl.losses,
        )


@dataclass(frozen=True, kw_only=True)
class PCLTraining:
    """The prototype conformity loss (Mustafa et al. 2019) as a training defense: cross-entropy
    warm-up, then :class:`PrototypeConformityLoss` with centroids on the penultimate features
    and the map feeding the last convolution (:func:`default_feature_layers`).

    Options (keyword-only; defaults in brackets):
        warmup_epochs: cross-entropy epochs first [3]. >= 0.
        epochs: the PCL phase's epochs [None: the model's recipe, 6; C 10]. >= 1.
        train_limit: train on the first N training images [None: all]. >= 1.
        prox_weight: lambda [1.0]; conprox_weight: gamma [1e-4, the authors']. >= 0.
        lr: Adam's rate in the PCL phase [1e-4]. > 0.
        seed: initialisation, shuffling [0]. >= 0.

    Stored as ``<dataset>-<model>-pcl[-<variant>].pt``: the plain classifier (the centroids are
    a training-time detail; see the module docstring).
    """

    name: ClassVar[str] = "pcl"
    label: ClassVar[str] = "PCL"
    store_variant: ClassVar[str] = "pcl"
    trains: ClassVar[bool] = True

    warmup_epochs: int = 3
    epochs: int | None = None
    train_limit: int | None = None
    prox_weight: float = DEFAULT_PROX_WEIGHT
    conprox_weight: float = DEFAULT_CONPROX_WEIGHT
    lr: float = DEFAULT_PCL_LR
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("warmup_epochs", self.warmup_epochs, low=0)
        if self.epochs is not None:
            check_int("epochs", self.epochs, low=1)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, low=1)
        check_real("prox_weight", self.prox_weight)
        check_real("conprox_weight", self.conprox_weight)
        check_real("lr", self.lr, strict=True)
        check_int("seed", self.seed, low=0)

    def adversarial(self) -> PGDAdversarialLoss | None:
        """The PGD settings of the adversarial variant (None: clean images only)."""
        return None

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        return None

    def identity(self) -> dict[str, Any]:
        return option_values(self)

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        name = check_model_name(model)
        adversarial = self.adversarial()
        trainer = PCLTrainer(
            model_name=name,
            warmup_epochs=self.warmup_epochs,
            prox_weight=self.prox_weight,
            conprox_weight=self.conprox_weight,
            lr=self.lr,
            adversarial=adversarial,
        )
        params: dict[str, Any] = {
            "warmup_epochs": self.warmup_epochs,
            "prox_weight": float(self.prox_weight),
            "conprox_weight": float(self.conprox_weight),
            "lr": float(self.lr),
            "feature_layers": list(default_feature_layers(build_model(name))),
            "centroid_lr_scale": DEFAULT_CENTROID_LR_SCALE,
        }
        if adversarial is not None:
            params.update(
                epsilon=adversarial.epsilon, alpha=adversarial.alpha, steps=adversarial.steps
            )
        return Training(
            make_loss=lambda: None,
            variant=store_variant(self, ctx.variant),
            params=params,
            epochs=self.epochs,
            train_limit=self.train_limit,
            seed=self.seed,
            trainer=trainer,
        )


@dataclass(frozen=True, kw_only=True)
class PCLPGDTraining(PCLTraining):
    """:class:`PCLTraining` with PGD adversarial examples added to each batch (the paper's
    adversarially trained variant): ``steps`` [40] of ``alpha`` [0.01] in the L-inf
    ``epsilon`` [0.3] ball, random start (Madry et al.'s MNIST settings), crafted on the
    cross-entropy. Stored as ``<dataset>-<model>-pcl-pgd[-<variant>].pt``."""

    name: ClassVar[str] = "pcl-pgd"
    label: ClassVar[str] = "PCL+PGD-adv"
    store_variant: ClassVar[str] = "pcl-pgd"

    epsilon: float = 0.3
    steps: int = 40
    alpha: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.adversarial()  # checks epsilon, steps, alpha

    def adversarial(self) -> PGDAdversarialLoss | None:
        return PGDAdversarialLoss(epsilon=self.epsilon, alpha=self.alpha, steps=self.steps)
