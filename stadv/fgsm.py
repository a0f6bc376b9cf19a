"""FGSM: the fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015, arXiv 1412.6572).

One L-inf step of size epsilon along the sign of the input gradient of the cross-entropy::

    x' = clip(x + epsilon * sign(grad_x J(x, y)))      (untargeted, true label y)
    x' = clip(x - epsilon * sign(grad_x J(x, t)))      (targeted, Kurakin et al. 2017)

with J the cross-entropy of the model's logits and ``clip`` to ``bounds`` ([0, 1]).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from stadv.attack_base import (
    AttackBatch,
    PixelAttack,
    check_attack_fields,
    count_zero_gradients,
    loss_ascent_gradient,
)
from stadv.options import check_real
from stadv.precision import Precision
from stadv.result import AttackResult


@dataclass(frozen=True, kw_only=True)
class FGSM(PixelAttack):
    """Fast gradient sign method, L-inf (Goodfellow et al. 2015). Hyper-parameters only.

    Args (keyword-only; defaults in brackets):
        epsilon: L-inf budget, the step size [0.3, the MNIST setting of Madry et al. and
            Tramèr et al.]. Finite, >= 0.
        bounds: valid pixel range (low, high) [(0.0, 1.0)]; the result is clipped to it.
        num_classes: classes of the model [10] (for the target protocols).
        seed: seeds the ``"random"`` target protocol [0].
        check: warn (:mod:`stadv.sanity`) when the model returns probabilities or has zero
            input gradients [True].
        precision: the policy of the attack's model evaluations, ``"fp32"`` [default,
            strict], ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs) or ``"bf16"``
            (bfloat16 autocast); the verdict on the returned images is strict fp32 in every
            case (:mod:`stadv.precision`).

    Call: ``attack(model, images, labels, targets=None) -> AttackResult`` with ``images``
    (N, C, H, W) in ``bounds``, ``labels`` (N,); ``targets`` as in :mod:`stadv.targets`.
    ``iterations`` and ``evaluations`` are 1; ``extra["zero_gradients"]`` counts samples whose
    gradient was zero (they are returned unchanged).

    Example::

        >>> result = FGSM(epsilon=0.3)(model, images, labels)
        >>> result.success.float().mean(), result.linf.max()   # linf <= 0.3
    """

    name: ClassVar[str] = "fgsm"
    label: ClassVar[str] = "FGSM"

    epsilon: float = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    seed: int = 0
    check: bool = True
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon)
        check_attack_fields(self)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        grad = loss_ascent_gradient(batch.net, batch.images, batch.labels, batch.targets)
        adv = (batch.images + self.epsilon * grad.sign()).clamp(*self.bounds)
        return batch.finish(
            adv,
            iterations=1,
            evaluations=1,
            stop_reason="single_step",
            extra={
                "attack": "fgsm",
                "params": asdict(self),
                "zero_gradients": count_zero_gradients(grad),
            },
        )
