"""The result every attack returns (stAdv, FGSM, PGD, C&W): one row per (image, target) attack."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AttackResult:
    """Adversarial examples and per-attack statistics.

    With M attacks (M = N for one target per image, 9N for ``targets="all"`` on 10 classes):

    Attributes:
        adv_images: (M, C, H, W) adversarial images in [0, 1] (the original where an attack failed
            and ``keep="best"`` found no successful iterate).
        success: (M,) bool. Targeted attacks: the model classifies ``adv_images`` as ``targets``;
            untargeted: as anything but ``labels``. Computed from the model's own prediction on
            ``adv_images``, so it always agrees with the model.
        predictions: (M,) int64, the model's class for ``adv_images``.
        labels: (M,) int64 true class of the source image.
        targets: (M,) int64 target class, or None for untargeted attacks.
        source_index: (M,) int64 index of the source image in the batch given to the attack.
        iterations, evaluations: (M,) int64 solver iterations and function evaluations.
        margin: (M,) float, the final adversarial margin ``max_{i!=t} Z_i - Z_t`` (targeted) or
            ``Z_y - max_{i!=y} Z_i`` (untargeted) on the returned image; < 0 means success.
        l2, linf: (M,) float, pixel-space distances between ``adv_images`` and the source images.
        flows: (M, 2, H, W) flow fields (stAdv only; None for pixel-space attacks).
        flow_loss: (M,) float L_flow of the returned flow (stAdv only).
        stop_reason: one string per attack ("pgtol", "factr", "max_iterations", ...).
        seconds: wall time of the whole call.
    """

    adv_images: torch.Tensor
    success: torch.Tensor
    predictions: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    source_index: torch.Tensor
    iterations: torch.Tensor
    evaluations: torch.Tensor
    margin: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    seconds: float
    stop_reason: tuple[str, ...] = ()
    flows: torch.Tensor | None = None
    flow_loss: torch.Tensor | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")
