"""The adversarial margin on logits, shared by stAdv, C&W and the result record."""

from __future__ import annotations

import torch


def margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample adversarial margin on logits Z (Carlini & Wagner 2017, f_6 with kappa = 0).

    Targeted: ``max_{i != t} Z_i - Z_t``; untargeted: ``Z_y - max_{i != y} Z_i``. Negative means
    the attack succeeds (ties aside). Args: ``logits`` (M, K), ``labels`` (M,), ``targets`` (M,)
    or None. Returns (M,). Differentiable in ``logits``.
    """
    cls = labels if targets is None else targets
    own = logits.gather(1, cls.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, cls.unsqueeze(1), float("-inf")).amax(dim=1)
    return own - others if targets is None else others - own
