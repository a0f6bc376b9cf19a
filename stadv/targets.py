"""Target protocols: which class each attack aims for, shared by every attack.

An attack is called with ``targets`` as one of

* ``None``: untargeted (move the image away from its true label);
* a tensor (N,) of target classes, one per image;
* ``"all"``: every image towards each of the other ``num_classes - 1`` classes (the paper's
  protocol for Table 1), image-major: image 0 to its targets in ascending order, then image 1;
* ``"random"``: one uniformly random class other than the label per image, drawn from a
  ``torch.Generator`` seeded with ``seed`` (no global random state is touched);
* ``"least-likely"``: the class with the lowest logit of the model on the clean image, among
  the classes other than the label (Kurakin et al. 2017's "least likely class").

:func:`expand_targets` turns any of these into one row per attack.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

TargetProtocol = Literal["all", "random", "least-likely"]
TARGET_PROTOCOLS: tuple[str, ...] = get_args(TargetProtocol)

#: What an attack's ``targets`` argument accepts.
TargetSpec = torch.Tensor | str | None

#: The target protocols by name, untargeted included: how command lines and sweeps spell them.
TargetChoice = Literal["all", "random", "least-likely", "untargeted"]
TARGET_CHOICES: tuple[str, ...] = get_args(TargetChoice)


def as_target_spec(choice: str) -> TargetSpec:
    """The ``targets`` argument for protocol name ``choice`` (one of :data:`TARGET_CHOICES`):
    ``"untargeted"`` is None, the others are themselves. ``ValueError`` names a bad one."""
    if choice not in TARGET_CHOICES:
        raise ValueError(
            f"unknown targets {choice!r}; allowed: {', '.join(map(repr, TARGET_CHOICES))}"
        )
    return None if choice == "untargeted" else choice


def _check_labels(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.dim() < 1 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must have shape ({images.shape[0] if images.dim() else '?'},), "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )


def expand_targets(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: TargetSpec,
    *,
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One row per attack: ``(images_rep, labels_rep, targets_rep | None, source_index)``.

    Args:
        model: the logits model; only used (without gradients) for ``"least-likely"``. The
            caller sets its mode (attacks call this inside
            :func:`~stadv.model_mode.prepared_model`).
        images: (N, C, H, W).
        labels: (N,) int64 true classes in [0, num_classes).
        targets: None, a tensor (N,) of classes, or a protocol (see the module docstring).
        num_classes: number of classes [10]; must be >= 2.
        seed: seeds the ``"random"`` protocol [0].
    Returns:
        ``images_rep`` (M, C, H, W), ``labels_rep`` (M,), ``targets_rep`` (M,) or None for an
        untargeted attack, and ``source_index`` (M,) int64, the row of ``images`` each attack
        comes from. M = N except for ``"all"`` (M = (num_classes - 1) N).
    Raises:
        ValueError: an unknown protocol (the message lists the known ones), a target tensor of
            the wrong shape or outside [0, num_classes), or a target equal to its label
            (a "targeted" attack that is already successful).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    _check_labels(images, labels, num_classes)
    n = images.shape[0]
    device = images.device
    labels = labels.to(device=device, dtype=torch.int64)
    index = torch.arange(n, device=device)
    if targets is None:
        return images, labels, None, index
    if isinstance(targets, torch.Tensor):
        t = targets.to(device=device)
        if t.shape != (n,) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(
                f"targets must be an integer tensor of shape ({n},), got {t.dtype} {tuple(t.shape)}"
            )
        t = t.to(torch.int64)
        if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"targets must lie in [0, {num_classes}), got {t.min()}..{t.max()}")
        if bool((t == labels).any()):
            raise ValueError(
                "targets must differ from labels (a target equal to the label is no attack)"
            )
        return images, labels, t, index
    if not isinstance(targets, str) or targets not in TARGET_PROTOCOLS:
        raise ValueError(
            f"unknown target protocol {targets!r}; allowed: None, a tensor of classes, "
            f"{', '.join(map(repr, TARGET_PROTOCOLS))}"
        )
    if targets == "all":
        k = num_classes - 1
        classes = torch.arange(num_classes, device=device).expand(n, num_classes)
        others = classes[classes != labels.unsqueeze(1)].view(n, k)
        source = index.repeat_interleave(k)
        return images[source], labels[source], others.reshape(-1), source
    if targets == "random":
        gen = torch.Generator().manual_seed(seed)
        draw = torch.randint(0, num_classes - 1, (n,), generator=gen).to(device)
        # Classes 0..K-2 skip the label: uniform over the K-1 other classes.
        t = draw + (draw >= labels).to(torch.int64)
        return images, labels, t, index
    with torch.no_grad():
        logits = model(images)
    if logits.shape != (n, num_classes):
        raise ValueError(
            f"model returned shape {tuple(logits.shape)}, expected ({n}, {num_classes})"
        )
    masked = logits.detach().clone()
    masked.scatter_(1, labels.unsqueeze(1), float("inf"))
    return images, labels, masked.argmin(dim=1), index
