"""Defenses against adversarial examples, as ordinary models every attack can differentiate.

* Adversarial training (:mod:`defenses.adversarial_training`): per-batch losses for
  :func:`stadv.train.train_model`; the trained models go to the model store under the variant
  ``adv-fgsm``, ``adv-pgd`` or ``adv-ensemble`` (``stadv train --defense ...``).
* Pre-processing (:mod:`defenses.blur`, :mod:`defenses.denoiser`): ``nn.Module`` s composed in
  front of a model, ``nn.Sequential(preprocessor, model)``; white-box attacks see through them.
* Defensive distillation (:mod:`defenses.distillation`, variant ``distilled``) and the
  prototype conformity loss (:mod:`defenses.prototype`, ``pcl``, ``pcl-pgd``): trained
  classifiers like adversarial training.
* Detection (:mod:`defenses.vae_detector`, :mod:`defenses.vae_defense`): a VAE detector that
  flags inputs and leaves the classifier as it is.

:func:`defended_model` loads any of them from the store by name.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from defenses.adversarial_training import (
    EnsembleAdversarialLoss,
    FGSMAdversarialLoss,
    PGDAdversarialLoss,
    prepared_model,
)
from defenses.blur import GaussianBlur
from defenses.denoiser import (
    DenoisingAutoencoder,
    load_denoiser,
    train_and_store_denoiser,
    train_denoiser,
)
from defenses.registry import DEFENSES as REGISTRY
from defenses.registry import (
    TRAINING_DEFENSES,
    TRAINING_VARIANTS,
    DefenseTraining,
    build_defense_training,
    defense_class,
    defense_variant,
)
from stadv.devices import resolve_device
from stadv.options import check_choice, options

#: Every defense by name (:mod:`defenses.registry`).
DEFENSES: tuple[str, ...] = tuple(REGISTRY)

__all__ = [
    "DEFENSES",
    "TRAINING_DEFENSES",
    "TRAINING_VARIANTS",
    "DefenseTraining",
    "DenoisingAutoencoder",
    "EnsembleAdversarialLoss",
    "FGSMAdversarialLoss",
    "GaussianBlur",
    "PGDAdversarialLoss",
    "build_defense_training",
    "defended_model",
    "defense_variant",
    "load_denoiser",
    "prepared_model",
    "train_and_store_denoiser",
    "train_denoiser",
]


def defended_model(
    name: str,
    defense: str,
    *,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    blur_kernel_size: int = 3,
    blur_sigma: float = 1.0,
    denoiser_variant: str = "",
    train_if_missing: bool = False,
) -> nn.Module:
    """Model ``name`` ("A", "B", "C") under ``defense``, from the store, in eval mode.

    Args:
        defense: ``"none"``; ``"fgsm"``, ``"pgd"``, ``"ensemble"``, ``"distillation"``,
            ``"pcl"``, ``"pcl-pgd"`` (the trained checkpoint ``<dataset>-<name>-<variant>.pt``,
            ``adv-<defense>``, ``distilled``, ``pcl``, ``pcl-pgd``; never trained here: missing
            ones raise :class:`~stadv.store.CheckpointError` naming ``stadv train --defense``);
            ``"blur"`` (``nn.Sequential(GaussianBlur(blur_kernel_size, blur_sigma), model)``) or
            ``"denoiser"`` (``nn.Sequential(stored denoiser, model)``).
        dataset, store, data_dir, device: as :func:`stadv.store.load_pretrained`.
        blur_kernel_size [3], blur_sigma [1.0]: the blur's parameters.
        denoiser_variant: which stored denoiser [""].
        train_if_missing: train a missing *undefended* base model first [False].
    Raises:
        ValueError: an unknown defense (the message lists them), a detector (``"vae"``: it is
            no model; :meth:`defenses.vae_defense.VAEDetectorDefense.detector` gives it) or bad
            blur parameters.
    """
    from defenses.base import DefenseContext, is_detector
    from stadv.store import CheckpointError, checkpoint_path, load_checkpoint, load_pretrained

    key = check_choice("defense", defense, DEFENSES)
    dev = resolve_device(device)
    cls = defense_class(key)
    if is_detector(cls):
        raise ValueError(
            f"defense {key!r} is a detector, not a model: build it with "
            f"{cls.__name__}().detector(classifier, context)"
        )
    given = {"kernel_size": blur_kernel_size, "sigma": blur_sigma}
    made = cls(**{k: v for k, v in given.items() if k in options(cls)})
    if cls.trains:
        path = checkpoint_path(name, dataset, store=store, variant=cls.store_variant)
        if not path.is_file():
            raise CheckpointError(
                f"no trained model at {path}; run "
                f"`stadv train --model {name} --dataset {dataset} --defense {key}`"
            )
        model, _ = load_checkpoint(path, model_name=name, map_location=dev)
        return model.to(dev).eval()
    base = load_pretrained(
        name,
        dataset=dataset,
        store=store,
        data_dir=data_dir,
        device=dev,
        train_if_missing=train_if_missing,
    )
    ctx = DefenseContext(
        dataset=dataset, store=store, data_dir=data_dir, variant=denoiser_variant, train=False
    )
    front = made.front(ctx)
    if front is None:
        return base
    return nn.Sequential(front, base).to(dev).eval()
