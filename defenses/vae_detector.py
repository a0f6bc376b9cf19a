"""A VAE reconstruction detector (MagNet-style; Meng & Chen, ACM CCS 2017, arXiv 1705.09064).

A convolutional variational autoencoder (Kingma & Welling, ICLR 2014) is trained on clean
training images (:func:`train_vae`, :class:`VAELoss`). Inputs far from the data manifold are
reconstructed badly, so the detector scores an input ``x`` with reconstruction ``r(x)`` (the
decoder at the posterior mean) by two of MagNet's detector statistics:

* the reconstruction error ``e(x) = mean_p (x_p - r(x)_p)^2`` (MagNet's MNIST detectors use the
  L1 and L2 errors);
* the Jensen-Shannon divergence between the classifier's softmax at temperature T on the input
  and on its reconstruction (MagNet's "probability divergence" detectors, T = 10 and 40)::

      JSD(P || Q) = (KL(P || M) + KL(Q || M)) / 2,   M = (P + Q) / 2,
      P = softmax(Z(x) / T),  Q = softmax(Z(r(x)) / T)

Each statistic is divided by its ``1 - fpr`` quantile on the clean validation images, and the
score is the larger of the two, ``s(x) = max(e(x) / q_val(e), JSD(x) / q_val(JSD))``: an input
is flagged when either detector fires, as MagNet's union of detectors, and the common scale
lets one threshold give the false-positive rate exactly.

The threshold is fitted on **clean validation images only** (:meth:`VAEDetector.fit_threshold`,
a held-out part of the *training* split, :func:`validation_split`): the ``1 - fpr`` quantile of
their scores, so about ``fpr`` (5 %) of clean inputs are flagged. Scoring, detecting and
:func:`roc_auc` never change it; the detector records the size and a SHA-256 of the images it
was fitted on (``fitted_on``) so a report can show where its threshold came from.

**Adaptive attacks** (Carlini & Wagner, AISec 2017, "Adversarial Examples Are Not Easily
Detected"): the score is differentiable, and

* :meth:`VAEDetector.penalty` ``relu(s(x) - threshold)`` is a penalty an attack's loss can add;
* :class:`DetectorAwareModel` composes the detector with the classifier into a model with
  K + 1 logits, the last one "detected": ``Z_K = max_i Z_i + scale * (s(x) - threshold)``,
  which leads exactly when the detector fires. Any attack on logits (stAdv, C&W) run on it with
  targets among the K real classes then has to reach the target *and* stay under the
  threshold: the margin ``max_{i != t} Z'_i - Z'_t`` includes the detected logit. No attack
  module changes: the knowledge of the detector is in the model.
* :func:`attack_knowing_detector` runs an attack on that model and reports, per attack, whether
  it fooled the classifier undetected (untargeted attacks run as "all targets": an untargeted
  margin on K + 1 logits would count "detected" as a success).

Example::

    >>> vae, _ = train_vae(train, epochs=5, seed=0)
    >>> detector = VAEDetector(vae, classifier, temperature=10.0)
    >>> detector.fit_threshold(validation.images, fpr=0.05)      # clean validation images only
    >>> flagged = detector.detect(adv_images)                    # bool (N,)
    >>> roc_auc(detector.scores(test.images), detector.scores(adv_images))
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from stadv.data import TensorData
from stadv.model_mode import prepared_model
from stadv.options import check_int, check_real
from stadv.result import AttackResult
from stadv.store import (
    CheckpointError,
    artifact_path,
    library_versions,
    load_module_state,
    save_module_state,
)
from stadv.targets import TargetSpec
from stadv.train import DEFAULT_BATCH_SIZE, DEFAULT_LR, TrainReport, train_new

DEFAULT_LATENT_DIM = 2
DEFAULT_TEMPERATURE = 10.0
DEFAULT_FPR = 0.05
DEFAULT_VAE_EPOCHS = 5

__all__ = [
    "DEFAULT_FPR",
    "DEFAULT_LATENT_DIM",
    "DEFAULT_TEMPERATURE",
    "ConvVAE",
    "DetectorAwareModel",
    "KnowingDetectorResult",
    "VAEDetector",
    "VAELoss",
    "attack_knowing_detector",
    "jensen_shannon",
    "load_vae",
    "roc_auc",
    "save_vae",
    "train_vae",
    "vae_path",
    "validation_split",
]


class ConvVAE(nn.Module):
    """Convolutional VAE for (N, C, 28, 28) images in [0, 1].

    Encoder ``Conv(32, 4x4, s2)+ReLU -> Conv(64, 4x4, s2)+ReLU -> FC(2 * latent_dim)`` (mean and
    log-variance of q(z|x)); decoder ``FC(64*7*7)+ReLU -> ConvT(32, 4x4, s2)+ReLU ->
    ConvT(C, 4x4, s2) + sigmoid`` (Bernoulli means of p(x|z)).

    Args (keyword-only): ``latent_dim`` [2], ``in_channels`` [1].

    ``forward(x)`` is the deterministic reconstruction ``decode(mu(x))`` (no sampling), so the
    detector's score is a deterministic, differentiable function of the input.
    """

    def __init__(self, *, latent_dim: int = DEFAULT_LATENT_DIM, in_channels: int = 1) -> None:
        super().__init__()
        check_int("latent_dim", latent_dim, low=1)
        check_int("in_channels", in_channels, low=1)
        self.latent_dim = latent_dim
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, in_channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_channels, 28, 28):
            raise ValueError(
                f"images must have shape (N, {self.in_channels}, 28, 28), got {tuple(images.shape)}"
            )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), each (N, latent_dim)."""
        self._check(images)
        mu, logvar = self.encoder(images).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli means (N, C, 28, 28) in (0, 1) for latents (N, latent_dim)."""
        out: torch.Tensor = self.decoder(z)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(images)
        return self.decode(mu)


@dataclass(frozen=True, kw_only=True)
class VAELoss:
    """The negative ELBO per image, averaged over the batch (a :class:`stadv.train.TrainLoss`;
    labels are ignored)::

        L(x) = BCE_sum(decode(z), x) + beta * KL(q(z|x) || N(0, I)),  z = mu + sigma * eps

    ``beta``: weight of the KL term [1.0, the plain VAE]. ``eps`` comes from torch's global
    generator, which :func:`stadv.train.train_model` seeds.
    """

    beta: float = 1.0

    def __post_init__(self) -> None:
        check_real("beta", self.beta)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        if not isinstance(model, ConvVAE):
            raise TypeError(f"VAELoss trains a ConvVAE, got {type(model).__name__}")
        mu, logvar = model.encode(images)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = model.decode(z)
        bce = F.binary_cross_entropy(recon, images, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (bce + self.beta * kl) / images.shape[0]


def train_vae(
    data: TensorData,
    *,
    latent_dim: int = DEFAULT_LATENT_DIM,
    beta: float = 1.0,
    epochs: int = DEFAULT_VAE_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> tuple[ConvVAE, TrainReport]:
    """Train a new :class:`ConvVAE` on the (clean, training) images of ``data`` (:class:`VAELoss`).

    Args: ``latent_dim`` [2], ``beta`` [1.0], ``epochs`` [5], ``batch_size`` [64], ``lr``
    [1e-3], ``seed`` (initialisation, shuffling, sampling) [0], ``device`` [CPU],
    ``max_batches`` per epoch [all], ``progress`` [False]. Returns the VAE in eval mode and the
    :class:`~stadv.train.TrainReport`.
    """
    loss = VAELoss(beta=beta)
    return train_new(
        lambda: ConvVAE(latent_dim=latent_dim, in_channels=int(data.images.shape[1])),
        data,
        loss_fn=loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        max_batches=max_batches,
        progress=progress,
    )


def vae_path(
    dataset: str = "mnist", *, store: str | os.PathLike[str] | None = None, variant: str = ""
) -> Path:
    """The VAE's store path: ``<store>/<dataset>-vae[-<variant>].pt``."""
    return artifact_path("vae", dataset, store=store, variant=variant)


def save_vae(
    model: ConvVAE,
    *,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    variant: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``model`` to the model store (atomic, checksummed sidecar); returns the sidecar.

    Only the VAE is stored: the detector's threshold depends on the protected classifier and
    is fitted again on validation images (:meth:`VAEDetector.fit_threshold`).
    """
    sidecar = {
        "kind": "vae",
        "dataset": dataset,
        "variant": variant,
        "latent_dim": model.latent_dim,
        "in_channels": model.in_channels,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        **(meta or {}),
    }
    return save_module_state(model, vae_path(dataset, store=store, variant=variant), sidecar)


def load_vae(
    dataset: str = "mnist",
    *,
    store: str | os.PathLike[str] | None = None,
    variant: str = "",
    device: str | torch.device = "cpu",
) -> ConvVAE:
    """The stored VAE of ``dataset`` in eval mode on ``device``.

    Raises:
        CheckpointError: missing, corrupt, or not a VAE.
    """
    path = vae_path(dataset, store=store, variant=variant)
    state, meta = load_module_state(path, map_location=device)
    if meta.get("kind") != "vae":
        raise CheckpointError(f"{path} does not hold a VAE (kind {meta.get('kind')!r})")
    model = ConvVAE(latent_dim=int(meta["latent_dim"]), in_channels=int(meta["in_channels"]))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit the VAE: {err}") from err
    return model.to(device).eval()


def validation_split(train: TensorData, n_validation: int) -> tuple[TensorData, TensorData]:
    """``(fit, validation)``: the last ``n_validation`` training images held out for the
    detector's threshold, the rest for training the VAE. Never use test images for either."""
    check_int("n_validation", n_validation, low=1)
    if n_validation >= len(train):
        raise ValueError(
            f"n_validation must be < {len(train)} (the training set), got {n_validation}"
        )
    cut = len(train) - n_validation
    return train.slice(0, cut), train.slice(cut, len(train))


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence (nats) between distributions ``p``, ``q`` (N, K) -> (N,)."""
    m = 0.5 * (p + q)
    kl_pm = (p * ((p + eps).log() - (m + eps).log())).sum(dim=1)
    kl_qm = (q * ((q + eps).log() - (m + eps).log())).sum(dim=1)
    return 0.5 * (kl_pm + kl_qm)


def roc_auc(clean_scores: torch.Tensor, adv_scores: torch.Tensor) -> float:
    """Area under the ROC curve of separating ``adv_scores`` (positives, higher = more
    suspicious) from ``clean_scores`` (negatives): P(s_adv > s_clean) + P(tie) / 2, the
    Mann-Whitney U statistic over all pairs. 1.0 separates perfectly, 0.5 is chance."""
    neg = clean_scores.detach().double().reshape(-1).cpu()
    pos = adv_scores.detach().double().reshape(-1).cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError("roc_auc needs at least one clean and one adversarial score")
    if not bool(torch.isfinite(neg).all() and torch.isfinite(pos).all()):
        raise ValueError("roc_auc: scores must be finite")
    neg = neg.sort().values
    below = torch.searchsorted(neg, pos, right=False)  # clean scores < each adversarial one
    not_above = torch.searchsorted(neg, pos, right=True)  # clean scores <= it
    wins = below.double().sum() + 0.5 * (not_above - below).double().sum()
    return float(wins) / (neg.numel() * pos.numel())


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class VAEDetector(nn.Module):
    """MagNet-style detector: ``forward(x)`` is the score s(x) (N,), higher = more suspicious.

    Args:
        vae: the trained :class:`ConvVAE` (any module mapping images to reconstructions).
        classifier: the protected logits model (for the divergence statistic).
        temperature: T of the softmax in the JSD [10.0, one of MagNet's].
        use_reconstruction, use_divergence: which statistics make up the score [both].

    Both modules are kept in eval mode (also by ``train()``): the detector is a fixed function
    of its input; their ``requires_grad`` flags are left alone (attacks freeze them through
    :func:`~stadv.model_mode.prepared_model`; :meth:`scores` runs without gradients).
    The scales and the threshold are buffers set only by :meth:`fit_threshold` (NaN before;
    :meth:`detect` then raises).
    """

    scales: torch.Tensor
    threshold: torch.Tensor

    def __init__(
        self,
        vae: nn.Module,
        classifier: nn.Module,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        use_reconstruction: bool = True,
        use_divergence: bool = True,
    ) -> None:
        super().__init__()
        check_real("temperature", temperature, strict=True)
        if not (use_reconstruction or use_divergence):
            raise ValueError("use_reconstruction and use_divergence cannot both be False")
        self.vae = vae.eval()
        self.classifier = classifier.eval()
        self.temperature = float(temperature)
        self.use_reconstruction = use_reconstruction
        self.use_divergence = use_divergence
        self.register_buffer("scales", torch.ones(2))
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.fitted_on: dict[str, object] = {}

    def train(self, mode: bool = True) -> VAEDetector:
        # The detector is a fixed function: its VAE and classifier stay in eval mode.
        super().train(mode)
        self.vae.eval()
        self.classifier.eval()
        return self

    def statistics(self, images: torch.Tensor) -> torch.Tensor:
        """The raw statistics (N, 2): reconstruction error and JSD (0 where unused)."""
        recon = self.vae(images)
        zero = images.new_zeros(images.shape[0])
        err = (images - recon).pow(2).flatten(1).mean(dim=1) if self.use_reconstruction else zero
        if self.use_divergence:
            p = F.softmax(self.classifier(images) / self.temperature, dim=1)
            q = F.softmax(self.classifier(recon) / self.temperature, dim=1)
            jsd = jensen_shannon(p, q)
        else:
            jsd = zero
        return torch.stack([err, jsd], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stats = self.statistics(images) / self.scales.to(images.dtype)
        mask = torch.tensor([self.use_reconstruction, self.use_divergence], device=images.device)
        return stats.masked_fill(~mask, float("-inf")).amax(dim=1)

    @property
    def fitted(self) -> bool:
        return bool(torch.isfinite(self.threshold))

    def scores(self, images: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
        """s(x) (N,) without gradients, in batches. Never changes the threshold."""
        check_int("batch_size", batch_size, low=1)
        with torch.no_grad():
            chunks = [
                self(images[s : s + batch_size]) for s in range(0, images.shape[0], batch_size)
            ]
        return torch.cat(chunks) if chunks else images.new_zeros(0)

    def fit_threshold(self, validation_images: torch.Tensor, fpr: float = DEFAULT_FPR) -> float:
        """Fit the statistics' scales and the threshold on clean **validation** images.

        The scales are the statistics' own ``1 - fpr`` quantiles on ``validation_images`` (each
        statistic alone would flag ``fpr`` of them at 1); the threshold is the ``1 - fpr``
        quantile of the resulting scores (the ``ceil((1 - fpr) n)``-th smallest), so at most a
        fraction ``fpr`` of ``validation_images`` score above it. Pass a held-out part of the
        training split (:func:`validation_split`), never test images. Returns the threshold.
        """
        fpr = check_real("fpr", fpr, strict=True)
        if fpr >= 1:
            raise ValueError(f"fpr must lie in (0, 1), got {fpr!r}")
        if validation_images.dim() != 4 or validation_images.shape[0] < 2:
            raise ValueError(
                "validation_images must have shape (N, C, H, W) with N >= 2, "
                f"got {tuple(validation_images.shape)}"
            )
        self.scales.fill_(1.0)
        with torch.no_grad():
            stats = torch.cat(
                [
                    self.statistics(validation_images[s : s + 500])
                    for s in range(0, validation_images.shape[0], 500)
                ]
            )
        n = stats.shape[0]
        k = min(n - 1, math.ceil((1 - fpr) * n) - 1)
        quantiles = stats.sort(dim=0).values[k]
        self.scales.copy_(torch.where(quantiles > 0, quantiles, torch.ones_like(quantiles)))
        scores = self.scores(validation_images).double().sort().values
        self.threshold.fill_(float(scores[k]))
        self.fitted_on = {
            "images": n,
            "sha256": _fingerprint(validation_images),
            "fpr_target": fpr,
            "fpr": float((scores > scores[k]).double().mean()),
        }
        return float(self.threshold)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("the detector has no threshold yet: call fit_threshold first")

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """Bool (N,): True where s(x) > threshold (flagged as adversarial)."""
        self._require_fitted()
        return self.scores(images) > self.threshold

    def penalty(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable ``relu(s(x) - threshold)`` (N,): zero on undetected inputs; an
        attack adds ``lambda * penalty`` to its loss to evade the detector."""
        self._require_fitted()
        return F.relu(self(images) - self.threshold)


class DetectorAwareModel(nn.Module):
    """The classifier and the detector as one logits model with K + 1 classes (Carlini &
    Wagner 2017's construction), class K meaning "detected"::

        Z'(x)_i = Z(x)_i                                      i < K
        Z'(x)_K = max_i Z(x)_i + scale * (s(x) - threshold)

    ``argmax Z' = K`` exactly when the detector fires; otherwise it is the classifier's class.
    Attack it with targets among the K real classes (``num_classes=K``; a target tensor,
    ``"all"`` or ``"random"``): the margin ``max_{i != t} Z'_i - Z'_t`` then includes the detected
    logit, so stAdv and C&W minimise detection along with the classification margin, and the
    attack's ``success`` (prediction == target) means "classified as t and not detected".
    Do not use untargeted attacks on it (a "detected" prediction is not the true label, so it
    would count as a success); :func:`attack_knowing_detector` runs them as ``"all"`` targets.

    Args: ``classifier`` (the detector's, by default), ``detector`` (fitted), ``scale`` the
    logit units per unit of score [10.0]; any scale > 0 gives the same decisions, it only
    weighs the detection term against the classification margin in the attack's loss.
    """

    def __init__(
        self, detector: VAEDetector, *, classifier: nn.Module | None = None, scale: float = 10.0
    ) -> None:
        super().__init__()
        detector._require_fitted()
        check_real("scale", scale, strict=True)
        self.detector = detector
        self.classifier = detector.classifier if classifier is None else classifier
        self.scale = float(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images)
        score = self.detector(images)
        detected = logits.amax(dim=1) + self.scale * (score - self.detector.threshold)
        return torch.cat([logits, detected.unsqueeze(1)], dim=1)


class Attack(Protocol):
    """What :func:`attack_knowing_detector` needs of an attack (stAdv, C&W, PGD, FGSM)."""

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult: ...


@dataclass(frozen=True)
class KnowingDetectorResult:
    """Result of :func:`attack_knowing_detector`.

    ``result``: the attack's result on the :class:`DetectorAwareModel` (its ``success`` means
    "classified as the target and not detected"); ``detected`` (M,): the detector flags the
    returned image; ``fooled`` (M,): the classifier's prediction is not the true label;
    ``evaded`` (M,): ``success`` recomputed from the classifier and the detector separately
    (targeted: prediction == target and not detected); ``evaded_images`` (N,): per source image,
    any of its attacks evaded (the untargeted success when run as ``"all"`` targets).
    """

    result: AttackResult
    detected: torch.Tensor
    fooled: torch.Tensor
    evaded: torch.Tensor
    evaded_images: torch.Tensor


def attack_knowing_detector(
    attack: Attack,
    detector: VAEDetector,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: TargetSpec = None,
    *,
    classifier: nn.Module | None = None,
    scale: float = 10.0,
) -> KnowingDetectorResult:
    """Run ``attack`` against the classifier *and* the detector (an adaptive attack).

    The attack runs on :class:`DetectorAwareModel` (``num_classes`` of the attack stays K, the
    real classes). ``targets=None`` (untargeted) is run as ``"all"``: every other class is tried
    and an image counts as evaded when any of them reaches its target undetected.
    """
    model = DetectorAwareModel(detector, classifier=classifier, scale=scale)
    result = attack(model, images, labels, "all" if targets is None else targets)
    adv = result.adv_images
    pred = result.labels.clone()
    with prepared_model(model.classifier) as net, torch.no_grad():
        if adv.shape[0]:
            pred = torch.cat([net(adv[s : s + 500]).argmax(dim=1) for s in range(0, len(adv), 500)])
    detected = detector.detect(adv)
    fooled = pred != result.labels
    hit = pred == result.targets if result.targets is not None else fooled
    evaded = hit & fooled & ~detected
    counts = torch.zeros(images.shape[0], dtype=torch.int64, device=evaded.device)
    counts.index_add_(0, result.source_index.to(evaded.device), evaded.to(torch.int64))
    per_image = counts > 0
    return KnowingDetectorResult(
        result=result, detected=detected, fooled=fooled, evaded=evaded, evaded_images=per_image
    )
