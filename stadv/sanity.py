"""Sanity checks in the style of AutoAttack: warn about models that make attacks look weak.

Two classic faults of failed reproductions: a model that returns probabilities (softmax
inside) instead of logits, which flattens the margin loss, and inputs whose gradient is zero
(gradient masking, a detached pre-processor), which leaves gradient attacks nothing to follow.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class SanityWarning(UserWarning):
    """A model property that makes attack results misleading."""


def outputs_look_like_probabilities(outputs: torch.Tensor, atol: float = 1e-4) -> bool:
    """True when every row is non-negative and sums to 1 (softmax outputs, not logits)."""
    if outputs.numel() == 0:
        return False
    sums = outputs.sum(dim=1)
    return bool((outputs >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=atol))


def check_model(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Warn (``SanityWarning``) when ``model`` outputs probabilities or has zero input gradients.

    Returns the list of problems found (empty when none). ``images``: a few (n, C, H, W) inputs.
    """
    problems: list[str] = []
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        if outputs_look_like_probabilities(out.detach()):
            problems.append(
                "the model's outputs are non-negative and sum to 1: it returns probabilities, "
                "not logits; margin losses on probabilities saturate (return logits instead)"
            )
        (grad,) = torch.autograd.grad(
            out.logsumexp(dim=1).sum() + out.max(dim=1).values.sum(), x, allow_unused=True
        )
    if grad is None or not bool(grad.abs().gt(0).any()):
        problems.append("the gradient of the model's outputs with respect to its inputs is zero")
    elif not bool(torch.isfinite(grad).all()):
        problems.append("the model's input gradient has NaN or infinite entries")
    for msg in problems:
        warnings.warn(msg, SanityWarning, stacklevel=3)
    return problems
