"""PGD: projected gradient descent, L-inf (Madry et al., ICLR 2018, arXiv 1706.06083).

Iterated FGSM from a random point of the epsilon-ball, projected back onto the ball and the
valid pixel range after every step::

    x^0     = clip(x + U(-epsilon, epsilon))                           (random_start)
    x^{k+1} = clip(Proj_{||. - x||_inf <= epsilon}(x^k + alpha * sign(grad_x J(x^k, y))))

for ``steps`` steps, J the cross-entropy of the model's logits (targeted: descend J(x, t)).
The MNIST setting of Madry et al. is epsilon 0.3, 40 steps of 0.01, random start; the last
iterate is returned, as in their code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from stadv.attack_base import (
    AttackBatch,
    PixelAttack,
    check_attack_fields,
    count_zero_gradients,
    loss_ascent_gradient,
)
from stadv.options import check_int, check_real
from stadv.precision import Precision
from stadv.result import AttackResult


@dataclass(frozen=True, kw_only=True)
class PGD(PixelAttack):
    """Projected gradient descent on the L-inf ball (Madry et al. 2018). Hyper-parameters only.

    Args (keyword-only; defaults in brackets):
        epsilon: L-inf radius [0.3]. Finite, >= 0.
        alpha: step size [0.01]. Finite, > 0.
        steps: gradient steps [40]. >= 1.
        random_start: start from a uniform point of the ball [True].
        seed: seeds the random start and the ``"random"`` target protocol [0]. ``None`` draws
            the start from torch's global generator (adversarial training, where the training
            loop seeds it); the ``"random"`` protocol then uses seed 0.
        bounds: valid pixel range (low, high) [(0.0, 1.0)].
        num_classes: classes of the model [10].
        check: warn (:mod:`stadv.sanity`) about probability outputs or zero gradients [True].
        precision: the policy of the attack's model evaluations, ``"fp32"`` [default,
            strict], ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs) or ``"bf16"``
            (bfloat16 autocast); the verdict on the returned images is strict fp32 in every
            case (:mod:`stadv.precision`).

    Call: ``attack(model, images, labels, targets=None) -> AttackResult``; ``iterations`` and
    ``evaluations`` equal ``steps``. Without a random start each row is independent of the rest
    of the batch; with one, the start depends on the row's position in the batch.

    Example::

        >>> result = PGD(epsilon=0.3, alpha=0.01, steps=40)(model, images, labels)
        >>> 1 - result.success.float().mean()                  # accuracy under attack
    """

    name: ClassVar[str] = "pgd"
    label: ClassVar[str] = "PGD"

    epsilon: float = 0.3
    alpha: float = 0.01
    steps: int = 40
    random_start: bool = True
    seed: int | None = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    check: bool = True
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon)
        check_real("alpha", self.alpha, strict=True)
        check_int("steps", self.steps, low=1)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"random_start must be True or False, got {self.random_start!r}")
        check_attack_fields(self)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start or self.epsilon == 0:
            return x.clone()
        if self.seed is None:
            noise = torch.rand(x.shape, device=x.device, dtype=x.dtype)
        else:
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        return (x + (2 * noise - 1) * self.epsilon).clamp(*self.bounds)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        net, x, y, t = batch.net, batch.images, batch.labels, batch.targets
        low, high = x - self.epsilon, x + self.epsilon
        adv = self._start(x)
        zero = 0
        for step in range(self.steps):
            grad = loss_ascent_gradient(net, adv, y, t)
            if step == 0:
                zero = count_zero_gradients(grad)
            adv = torch.minimum(torch.maximum(adv + self.alpha * grad.sign(), low), high)
            adv = adv.clamp(*self.bounds)
        return batch.finish(
            adv,
            iterations=self.steps,
            evaluations=self.steps,
            stop_reason="max_iterations",
            extra={"attack": "pgd", "params": asdict(self), "zero_gradients": zero},
        )
