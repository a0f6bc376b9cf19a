"""FGSM: the fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015, arXiv 1412.6572).

One L-inf step of size epsilon along the sign of the input gradient of the cross-entropy::

    x' = clip(x + epsilon * sign(grad_x J(x, y)))      (untargeted, true label y)
    x' = clip(x - epsilon * sign(grad_x J(x, t)))      (targeted, Kurakin et al. 2017)

with J the cross-entropy of the model's logits and ``clip`` to ``bounds`` ([0, 1]).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from stadv.attack_common import (
    check_bounds,
    check_inputs,
    check_int,
    check_real,
    count_zero_gradients,
    finalize_result,
    loss_ascent_gradient,
    prepared_model,
)
from stadv.result import AttackResult
from stadv.sanity import check_model
from stadv.targets import TargetSpec, expand_targets


@dataclass(frozen=True, kw_only=True)
class FGSM:
    """Fast gradient sign method, L-inf (Goodfellow et al. 2015). Hyper-parameters only.

    Args (keyword-only; defaults in brackets):
        epsilon: L-inf budget, the step size [0.3, the MNIST setting of Madry et al. and
            Tramèr et al.]. Finite, >= 0.
        bounds: valid pixel range (low, high) [(0.0, 1.0)]; the result is clipped to it.
        num_classes: classes of the model [10] (for the target protocols).
        seed: seeds the ``"random"`` target protocol [0].
        check: warn (:mod:`stadv.sanity`) when the model returns probabilities or has zero
            input gradients [True].

    Call: ``attack(model, images, labels, targets=None) -> AttackResult`` with ``images``
    (N, C, H, W) in ``bounds``, ``labels`` (N,); ``targets`` as in :mod:`stadv.targets`.
    ``iterations`` and ``evaluations`` are 1; ``extra["zero_gradients"]`` counts samples whose
    gradient was zero (they are returned unchanged).

    Example::

        >>> result = FGSM(epsilon=0.3)(model, images, labels)
        >>> result.success.float().mean(), result.linf.max()   # linf <= 0.3
    """

    epsilon: float = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    seed: int = 0
    check: bool = True

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon)
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        check_int("num_classes", self.num_classes, low=2)
        check_int("seed", self.seed, low=0)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult:
        start = time.perf_counter()
        check_inputs(images, labels, self.bounds)
        x0 = images.detach()
        y0 = labels.detach().to(images.device)
        with prepared_model(model) as net:
            if self.check and x0.shape[0]:
                check_model(net, x0[:8])
            x, y, t, src = expand_targets(
                net, x0, y0, targets, num_classes=self.num_classes, seed=self.seed
            )
            grad = loss_ascent_gradient(net, x, y, t)
            adv = (x + self.epsilon * grad.sign()).clamp(*self.bounds)
            return finalize_result(
                net,
                adv_images=adv,
                images=x,
                labels=y,
                targets=t,
                source_index=src,
                iterations=1,
                evaluations=1,
                stop_reason="single_step",
                seconds=time.perf_counter() - start,
                extra={
                    "attack": "fgsm",
                    "params": asdict(self),
                    "zero_gradients": count_zero_gradients(grad),
                },
            )
