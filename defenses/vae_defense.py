"""The VAE reconstruction detector (MagNet-style, Meng & Chen 2017) as a row of a defense table.

A detector leaves the classifier as it is; what a defense table reports for it is, per attack,

* the **detection rate**: the share of the attack's *successful* adversarial examples that the
  detector flags at the threshold giving ``fpr`` (5 %) false positives on clean **validation**
  images (the last ``n_validation`` of the training images used, held out from the VAE's
  training: :func:`defenses.vae_detector.validation_split`; never test images);
* the **ROC AUC** of the detector's score separating the clean test images from those
  successful adversarial examples (:func:`defenses.vae_detector.roc_auc`);
* the **adaptive success**: the attack run against the classifier *and* the detector together
  (:func:`defenses.vae_detector.attack_knowing_detector`, Carlini & Wagner, AISec 2017): the
  share of attacks (targeted) or images (untargeted) that reach the goal undetected. Only for
  the attacks of :data:`ADAPTIVE_ATTACKS`, whose losses read the logits of the detector-aware
  model: DeepFool is untargeted only (on the K + 1 logits, crossing into "detected" would count
  as a success), JSMA's saliency map and the few-pixel attack's fitness read the K classes'
  outputs and have not been checked on that model.

:class:`VAEDetectorDefense` trains the VAE once per (dataset, settings) and stores it as
``<dataset>-vae[-<variant>].pt`` (:func:`defenses.vae_detector.save_vae`), like the denoiser;
the threshold depends on the protected classifier and is fitted again each time (seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from defenses.base import DefenseContext, Training, check_recorded, option_values, store_variant
from defenses.vae_detector import (
    DEFAULT_FPR,
    DEFAULT_LATENT_DIM,
    DEFAULT_TEMPERATURE,
    DEFAULT_VAE_EPOCHS,
    Attack,
    ConvVAE,
    VAEDetector,
    attack_knowing_detector,
    load_vae,
    roc_auc,
    save_vae,
    train_vae,
    vae_path,
    validation_split,
)
from stadv.data import TensorData, load_tensors
from stadv.devices import resolve_device
from stadv.metrics import wilson_interval
from stadv.options import check_int, check_real
from stadv.result import AttackResult
from stadv.store import load_module_state
from stadv.targets import TargetSpec

#: The attacks whose adaptive version (:func:`attack_knowing_detector`) the table reports.
ADAPTIVE_ATTACKS: tuple[str, ...] = ("stadv", "cw", "pgd", "fgsm")
#: MagNet's validation set size on MNIST.
DEFAULT_N_VALIDATION = 5000

__all__ = [
    "ADAPTIVE_ATTACKS",
    "DEFAULT_N_VALIDATION",
    "DetectorMetrics",
    "VAEDetectorDefense",
    "detection_metrics",
]


@dataclass(frozen=True, kw_only=True)
class VAEDetectorDefense:
    """The VAE detector in front of the undefended classifier, flagging instead of correcting.

    Options (keyword-only; defaults in brackets):
        epochs: the VAE's training epochs [5]. >= 1.
        train_limit: use the first N training images [None: all]; the last ``n_validation`` of
            them are held out for the threshold, the VAE trains on the rest. >= 2.
        n_validation: clean validation images for the threshold [5000]. >= 1, < the images used.
        latent_dim: the VAE's latent dimension [2]. >= 1.
        fpr: false-positive rate on the validation images the threshold is set at [0.05].
            In (0, 1).
        temperature: T of the softmax in the detector's divergence statistic [10.0]. > 0.
        seed: the VAE's initialisation, shuffling and sampling [0]. >= 0.

    It trains no classifier and puts nothing in front of it (:meth:`training` and
    :meth:`front` return None); :meth:`detector` gives the fitted detector.
    """

    name: ClassVar[str] = "vae"
    label: ClassVar[str] = "VAE detector"
    store_variant: ClassVar[str] = ""
    trains: ClassVar[bool] = False

    epochs: int = DEFAULT_VAE_EPOCHS
    train_limit: int | None = field(default=None, metadata={"none": "all"})
    n_validation: int = DEFAULT_N_VALIDATION
    latent_dim: int = DEFAULT_LATENT_DIM
    fpr: float = DEFAULT_FPR
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        check_int("n_validation", self.n_validation, low=1)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, low=2)
            if self.n_validation >= self.train_limit:
                raise ValueError(
                    f"n_validation must be < train_limit={self.train_limit}, "
                    f"got {self.n_validation}"
                )
        check_int("latent_dim", self.latent_dim, low=1)
        if not check_real("fpr", self.fpr, strict=True) < 1:
            raise ValueError(f"fpr must lie in (0, 1), got {self.fpr!r}")
        check_real("temperature", self.temperature, strict=True)
        check_int("seed", self.seed, low=0)

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        return None

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        return None

    def identity(self) -> dict[str, Any]:
        return option_values(self)

    def split(self, ctx: DefenseContext) -> tuple[TensorData, TensorData]:
        """``(fit, validation)`` of the training split: the VAE's images and the threshold's."""
        train = load_tensors(ctx.dataset, split="train", data_dir=ctx.data_dir)
        if self.train_limit is not None:
            train = train.slice(0, min(self.train_limit, len(train)))
        return validation_split(train, self.n_validation)

    def vae(self, fit: TensorData, ctx: DefenseContext) -> ConvVAE:
        """The VAE trained on ``fit``: from the store (checked against the options), or
        (``ctx.train``) trained and stored now. A stored one trained otherwise is
        :class:`~defenses.base.StoredDefenseMismatch`; a missing one with ``ctx.train`` False
        is :class:`~stadv.store.CheckpointError`."""
        variant = store_variant(self, ctx.variant)
        path = vae_path(ctx.dataset, store=ctx.store, variant=variant)
        if not ctx.train:
            return load_vae(ctx.dataset, store=ctx.store, variant=variant)
        expected = {
            "epochs": self.epochs,
            "seed": self.seed,
            "train_images": len(fit),
            "n_validation": self.n_validation,
            "latent_dim": self.latent_dim,
        }
        if not path.is_file():
            vae, report = train_vae(
                fit,
                latent_dim=self.latent_dim,
                epochs=self.epochs,
                seed=self.seed,
                device=resolve_device(ctx.device),
                progress=ctx.progress,
            )
            save_vae(
                vae,
                dataset=ctx.dataset,
                store=ctx.store,
                variant=variant,
                meta={
                    **expected,
                    "train_seconds": report.seconds,
                    "epoch_losses": list(report.losses),
                },
            )
        vae = load_vae(ctx.dataset, store=ctx.store, variant=variant)
        _, meta = load_module_state(path, map_location="cpu")
        check_recorded(str(path), {k: meta.get(k) for k in expected}, expected)
        return vae

    def detector(self, classifier: nn.Module, ctx: DefenseContext) -> VAEDetector:
        """The detector of ``classifier``'s inputs (CPU, eval mode), its threshold fitted on the
        clean validation images at ``fpr`` (:meth:`VAEDetector.fit_threshold`)."""
        fit, validation = self.split(ctx)
        vae = self.vae(fit, ctx).cpu()
        detector = VAEDetector(vae, classifier.cpu().eval(), temperature=self.temperature)
        detector.fit_threshold(validation.images, fpr=self.fpr)
        return detector.eval()


def _rate(prefix: str, hits: torch.Tensor) -> dict[str, float]:
    """``<prefix>_rate`` and its Wilson 95 % interval for the bool tensor ``hits``."""
    n, k = int(hits.numel()), int(hits.sum())
    low, high = wilson_interval(k, n)
    return {
        f"{prefix}_rate": k / n if n else math.nan,
        f"{prefix}_ci_low": low,
        f"{prefix}_ci_high": high,
    }


def detection_metrics(
    detector: VAEDetector,
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: TargetSpec,
    result: AttackResult,
    *,
    adaptive: bool,
) -> dict[str, float]:
    """What a defense table shows for the detector against one attack.

    Args:
        detector: fitted (:meth:`VAEDetectorDefense.detector`), on the images' device.
        attack: the attack that gave ``result`` (run again, knowing the detector, if
            ``adaptive``).
        images, labels: the clean test images (N, C, H, W) and labels (N,) attacked.
        targets: the target protocol ``result`` was run with (None: untargeted).
        result: the attack's result on the classifier alone.
        adaptive: also run the adaptive attack (:data:`ADAPTIVE_ATTACKS`).
    Returns:
        ``detection_rate`` (+ ``_ci_low``/``_ci_high``): flagged share of the successful
        adversarial examples (``detection_attacks`` of them; NaN when none succeeded);
        ``roc_auc``: clean test scores against theirs (NaN when none); ``detector_fpr_test``:
        the flagged share of the clean test images; ``adaptive_success_rate`` (+ interval):
        evaded share, per attack (targeted) or per image (untargeted); NaN unless ``adaptive``.
    """
    if not detector.fitted:
        raise ValueError("the detector has no threshold: fit it on validation images first")
    clean = detector.scores(images)
    ok = result.success.to(result.adv_images.device)
    adv = result.adv_images[ok]
    out: dict[str, float] = {
        "detection_attacks": float(adv.shape[0]),
        "detector_fpr_test": float((clean > detector.threshold).double().mean()),
        "detector_threshold": float(detector.threshold),
    }
    flagged = detector.detect(adv) if adv.shape[0] else torch.zeros(0, dtype=torch.bool)
    out.update(_rate("detection", flagged))
    out["roc_auc"] = roc_auc(clean, detector.scores(adv)) if adv.shape[0] else math.nan
    if adaptive:
        knowing = attack_knowing_detector(attack, detector, images, labels, targets)
        out.update(
            _rate(
                "adaptive_success", knowing.evaded if targets is not None else knowing.evaded_images
            )
        )
    else:
        out.update(adaptive_success_rate=math.nan)
        out.update(adaptive_success_ci_low=math.nan, adaptive_success_ci_high=math.nan)
    return out


@dataclass(frozen=True)
class DetectorMetrics:
    """:func:`detection_metrics` of one fitted ``detector`` as a trial's further metrics: called
    with the attack's registry name, the attack, the clean images and labels, the target
    protocol and the attack's result on the classifier alone (the detector moves to the
    images' device; the adaptive attack runs for :data:`ADAPTIVE_ATTACKS` only)."""

    detector: VAEDetector

    def __call__(
        self,
        attack_name: str,
        attack: Attack,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec,
        result: AttackResult,
    ) -> dict[str, float]:
        detector = self.detector.to(images.device).eval()
        return detection_metrics(
            detector,
            attack,
            images,
            labels,
            targets,
            result,
            adaptive=attack_name in ADAPTIVE_ATTACKS,
        )
