"""Training and evaluation of classifiers.

Defaults follow the reference code the paper's models come from (Tramèr et al., ensemble
adversarial training, ``train.py``): Adam, learning rate 1e-3, batch size 64, cross-entropy
on logits, 6 epochs.

The per-batch loss is a :class:`TrainLoss` object, so adversarial training (``defenses``)
plugs in its own loss without a second training loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from stadv.data import TensorData

DEFAULT_EPOCHS = 6
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 1e-3


class TrainLoss(Protocol):
    """Loss of one training batch: ``loss(model, images, labels) -> scalar``."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


class CrossEntropy:
    """Plain cross-entropy on the model's logits."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    seconds: float
    final_loss: float
    losses: tuple[float, ...]  # mean training loss per epoch


def train_model(
    model: nn.Module,
    data: TensorData,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: torch.device | None = None,
    loss_fn: TrainLoss | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> TrainReport:
    """Train ``model`` in place with Adam and return a :class:`TrainReport`.

    Args:
        model: a logits model; moved to ``device`` (default: where its parameters are).
        data: training images (N, 1, 28, 28) in [0, 1] and labels (N,).
        epochs: passes over ``data`` (default 6). Must be >= 1.
        batch_size: default 64. lr: Adam's learning rate, default 1e-3.
        seed: seeds the shuffling order (a private generator: no global state touched) and
            dropout (``torch.manual_seed`` for the duration of training).
        loss_fn: per-batch loss (default :class:`CrossEntropy`).
        max_batches: stop each epoch after this many batches (for quick tests).
        progress: show a tqdm bar.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    loss_fn = loss_fn or CrossEntropy()
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    images, labels = data.images.to(device), data.labels.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    n_batches = (n + batch_size - 1) // batch_size
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    losses: list[float] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=gen).to(device)
            total, count = 0.0, 0
            bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for b in bar:
                idx = order[b * batch_size : (b + 1) * batch_size]
                loss = loss_fn(model, images[idx], labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
                if b % 50 == 0:
                    bar.set_postfix(loss=f"{total / count:.4f}")
            losses.append(total / max(count, 1))
    model.eval()
    return TrainReport(epochs=epochs, seconds=time.perf_counter() - start, final_loss=losses[-1], losses=tuple(losses))


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = 1000, device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.images[start : start + batch_size].to(device)
            y = data.labels[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(data)
