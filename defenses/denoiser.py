"""A denoising autoencoder as an input pre-processing defense (``nn.Module``).

Trained to map Gaussian-noised images back to the clean ones (Vincent et al. 2008; as a
defense, MagNet, Meng & Chen 2017, whose MNIST reformer is a small convolutional
autoencoder trained with noise 0.1)::

    min_theta  E BCE(D_theta(clip(x + sigma * n, 0, 1)), x),   n ~ N(0, I)

with BCE the pixel-wise binary cross-entropy against the clean image, as the Keras example
trains it (MagNet uses the squared error; with a sigmoid output the squared error's gradient
vanishes on saturated pixels and short runs on MNIST's mostly-black images collapse to a black
output). :func:`denoising_error` reports the squared error.

The architecture is the small convolutional autoencoder of the Keras denoising example::

    Conv(C, 3x3)+ReLU, MaxPool 2  ->  Conv(C, 3x3)+ReLU, MaxPool 2           (encoder, 7x7)
    Conv(C, 3x3)+ReLU, Upsample 2 ->  Conv(C, 3x3)+ReLU, Upsample 2
    Conv(in_channels, 3x3) + sigmoid                                         (decoder, [0, 1])

It is differentiable, so white-box attacks see through it: put it in front of a classifier with
``nn.Sequential(denoiser, model)``. Checkpoints go to the model store as
``<dataset>-denoiser[-<variant>].pt`` with a JSON sidecar (:func:`stadv.store.save_module_state`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from defenses.base import DefenseContext, Training, check_recorded, option_values, store_variant
from stadv.data import TensorData, load_tensors
from stadv.devices import resolve_device
from stadv.options import check_int, check_real
from stadv.store import (
    CheckpointError,
    artifact_path,
    library_versions,
    load_module_state,
    save_module_state,
)
from stadv.train import DEFAULT_BATCH_SIZE, DEFAULT_LR, TrainReport, train_new

DEFAULT_NOISE_STD = 0.1
DEFAULT_DENOISER_EPOCHS = 5
DEFAULT_DENOISER_CHANNELS = 32


class DenoisingAutoencoder(nn.Module):
    """Convolutional denoising autoencoder for (N, C, H, W) images in [0, 1], H, W divisible by 4.

    Args (keyword-only): ``channels`` feature maps per layer [32]; ``in_channels`` [1].
    """

    def __init__(self, *, channels: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        check_int("channels", channels, low=1)
        check_int("in_channels", in_channels, low=1)
        self.channels = channels
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (
            images.dim() != 4
            or images.shape[1] != self.in_channels
            or images.shape[2] % 4
            or images.shape[3] % 4
        ):
            raise ValueError(
                f"images must have shape (N, {self.in_channels}, H, W) with H, W divisible by 4, "
                f"got {tuple(images.shape)}"
            )
        out: torch.Tensor = self.decoder(self.encoder(images))
        return out


def add_noise(
    images: torch.Tensor, noise_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``clip(x + noise_std * n, 0, 1)``, ``n ~ N(0, I)`` (from ``generator`` if given)."""
    if generator is None:
        noise = torch.randn_like(images)
    else:
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (images + noise_std * noise).clamp(0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class DenoisingLoss:
    """Training loss of the denoiser (a :class:`stadv.train.TrainLoss`; labels are ignored):
    the mean binary cross-entropy ``BCE(D(clip(x + noise_std * n, 0, 1)), x)``.

    ``noise_std``: sigma of the Gaussian noise [0.1]. The noise comes from torch's global
    generator, which :func:`stadv.train.train_model` seeds.
    """

    noise_std: float = DEFAULT_NOISE_STD

    def __post_init__(self) -> None:
        check_real("noise_std", self.noise_std)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return F.binary_cross_entropy(model(add_noise(images, self.noise_std)), images)


def train_denoiser(
    data: TensorData,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
    channels: int = 32,
    epochs: int = DEFAULT_DENOISER_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> tuple[DenoisingAutoencoder, TrainReport]:
    """Train a new :class:`DenoisingAutoencoder` on noised ``data`` (:class:`DenoisingLoss`, Adam).

    Args: ``noise_std`` [0.1], ``channels`` [32], ``epochs`` [5], ``batch_size`` [64], ``lr``
    [1e-3], ``seed`` (initialisation, shuffling and noise) [0], ``device`` [CPU],
    ``max_batches`` per epoch [all], ``progress`` [False]. Returns the model (eval mode) and
    the :class:`~stadv.train.TrainReport` (mean loss per epoch).
    """
    loss = DenoisingLoss(noise_std=noise_std)
    return train_new(
        lambda: DenoisingAutoencoder(channels=channels, in_channels=int(data.images.shape[1])),
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


def denoising_error(
    model: nn.Module,
    data: TensorData,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
    seed: int = 0,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """Mean squared error to the clean images of the noised images and of their denoised version.

    Returns ``(noisy_mse, denoised_mse)``; a useful denoiser has ``denoised_mse < noisy_mse``.
    The noise is drawn from a generator seeded with ``seed``.
    """
    check_real("noise_std", noise_std)
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    noisy_sum = denoised_sum = 0.0
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            x = data.images[s : s + batch_size].to(device)
            noisy = add_noise(x, noise_std, gen)
            noisy_sum += float(F.mse_loss(noisy, x, reduction="sum"))
            denoised_sum += float(F.mse_loss(model(noisy), x, reduction="sum"))
    model.train(was_training)
    n = data.images.numel()
    return noisy_sum / n, denoised_sum / n


def denoiser_path(
    dataset: str = "mnist", *, store: str | os.PathLike[str] | None = None, variant: str = ""
) -> Path:
    """The denoiser's store path: ``<store>/<dataset>-denoiser[-<variant>].pt``."""
    return artifact_path("denoiser", dataset, store=store, variant=variant)


def save_denoiser(
    model: DenoisingAutoencoder,
    *,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    variant: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``model`` to the store (atomic, with a checksummed sidecar); returns the sidecar."""
    sidecar = {
        "kind": "denoiser",
        "dataset": dataset,
        "variant": variant,
        "channels": model.channels,
        "in_channels": model.in_channels,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        **(meta or {}),
    }
    return save_module_state(model, denoiser_path(dataset, store=store, variant=variant), sidecar)


def load_denoiser(
    dataset: str = "mnist",
    *,
    store: str | os.PathLike[str] | None = None,
    variant: str = "",
    device: str | torch.device = "cpu",
) -> DenoisingAutoencoder:
    """The stored denoiser of ``dataset`` in eval mode on ``device``.

    Raises:
        CheckpointError: missing (run ``stadv train-denoiser``), corrupt, or not a denoiser.
    """
    path = denoiser_path(dataset, store=store, variant=variant)
    if not path.is_file():
        raise CheckpointError(
            f"no denoiser at {path}; run `stadv train-denoiser --dataset {dataset}`"
        )
    state, meta = load_module_state(path, map_location=device)
    if meta.get("kind") != "denoiser":
        raise CheckpointError(f"{path} does not hold a denoiser (kind {meta.get('kind')!r})")
    model = DenoisingAutoencoder(
        channels=int(meta["channels"]), in_channels=int(meta["in_channels"])
    )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit the denoiser: {err}") from err
    return model.to(device).eval()


def train_and_store_denoiser(
    dataset: str = "mnist",
    *,
    store: str | os.PathLike[str] | None = None,
    variant: str = "",
    data_dir: str | os.PathLike[str] | None = None,
    noise_std: float = DEFAULT_NOISE_STD,
    epochs: int = DEFAULT_DENOISER_EPOCHS,
    channels: int = 32,
    train_limit: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[DenoisingAutoencoder, dict[str, Any]]:
    """Train the denoiser on ``dataset``'s training split, measure it on the test split and save
    it to the store as ``<dataset>-denoiser[-<variant>].pt`` (:func:`denoiser_path`).

    Args:
        dataset: the data set, installed under ``data_dir`` (:func:`stadv.data.load_tensors`;
            install it first with :func:`stadv.data.ensure_data`) ["mnist"].
        store: the model store [None: ``$STADV_STORE`` or the default].
        variant: the store variant [""].
        noise_std: sigma of the training noise [0.1, MagNet's]. >= 0.
        epochs: training epochs [5]. >= 1.
        channels: feature maps per layer [32]. >= 1.
        train_limit: train on the first N training images only [None: all]. >= 1.
        seed: initialisation, shuffling and noise [0]. >= 0.
        device: where to train [None: CUDA when available] (:func:`stadv.devices.resolve_device`).
        progress: show a progress bar [False].
    Returns:
        The trained model (eval mode) and the sidecar written beside it (``noise_std``,
        ``epochs``, ``seed``, ``train_images``, ``train_seconds``, ``epoch_losses``,
        ``test_noisy_mse``, ``test_denoised_mse``, ``path``, ...).
    Raises:
        ValueError: a bad argument, before any data is loaded or anything is written.

    Example::

        >>> model, meta = train_and_store_denoiser("mnist", epochs=1, train_limit=1000)
        >>> meta["test_denoised_mse"] < meta["test_noisy_mse"]
    """
    noise_std = check_real("noise_std", noise_std)
    check_int("epochs", epochs, low=1)
    check_int("channels", channels, low=1)
    check_int("seed", seed, low=0)
    if train_limit is not None:
        check_int("train_limit", train_limit, low=1)
    path = denoiser_path(dataset, store=store, variant=variant)  # checks dataset and variant
    dev = resolve_device(device)
    train = load_tensors(dataset, split="train", data_dir=data_dir)
    if train_limit is not None:
        train = train.slice(0, train_limit)
    test = load_tensors(dataset, split="test", data_dir=data_dir)
    model, report = train_denoiser(
        train,
        noise_std=noise_std,
        channels=channels,
        epochs=epochs,
        seed=seed,
        device=dev,
        progress=progress,
    )
    noisy, denoised = denoising_error(model, test, noise_std=noise_std, seed=seed)
    meta = save_denoiser(
        model,
        dataset=dataset,
        store=store,
        variant=variant,
        meta={
            "noise_std": noise_std,
            "epochs": epochs,
            "seed": seed,
            "train_images": len(train),
            "train_seconds": report.seconds,
            "epoch_losses": list(report.losses),
            "test_noisy_mse": noisy,
            "test_denoised_mse": denoised,
        },
    )
    return model, {**meta, "path": str(path)}


@dataclass(frozen=True, kw_only=True)
class DenoiserDefense:
    """The denoising-autoencoder defense (MagNet-style reformer) in front of the undefended
    classifier: trained once with noise ``noise_std`` [0.1] for ``epochs`` [5] on the first
    ``train_limit`` [None: all] training images (``seed`` [0], ``channels`` [32]) and stored
    as ``<dataset>-denoiser[-<variant>].pt``; a stored one trained otherwise is an error."""

    name: ClassVar[str] = "denoiser"
    label: ClassVar[str] = "denoiser"
    store_variant: ClassVar[str] = ""
    trains: ClassVar[bool] = False

    epochs: int = DEFAULT_DENOISER_EPOCHS
    train_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, low=1)
        check_int("seed", self.seed, low=0)

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        return None

    def identity(self) -> dict[str, Any]:
        return option_values(self)

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        variant = store_variant(self, ctx.variant)
        path = denoiser_path(ctx.dataset, store=ctx.store, variant=variant)
        if not ctx.train:
            return load_denoiser(ctx.dataset, store=ctx.store, variant=variant)
        if not path.is_file():
            train_and_store_denoiser(
                ctx.dataset,
                store=ctx.store,
                variant=variant,
                data_dir=ctx.data_dir,
                noise_std=DEFAULT_NOISE_STD,
                epochs=self.epochs,
                channels=DEFAULT_DENOISER_CHANNELS,
                train_limit=self.train_limit,
                seed=self.seed,
                device=ctx.device,
                progress=ctx.progress,
            )
        model = load_denoiser(ctx.dataset, store=ctx.store, variant=variant)
        _, meta = load_module_state(path, map_location="cpu")
        n_train = len(load_tensors(ctx.dataset, split="train", data_dir=ctx.data_dir))
        expected = {
            "epochs": self.epochs,
            "train_images": n_train if self.train_limit is None else min(self.train_limit, n_train),
            "seed": self.seed,
            "noise_std": DEFAULT_NOISE_STD,
            "channels": DEFAULT_DENOISER_CHANNELS,
        }
        recorded = {k: meta.get(k) for k in expected}
        recorded["channels"] = model.channels
        check_recorded(str(path), recorded, expected)
        return model
