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
class PGD:
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

    Call: ``attack(model, images, labels, targets=None) -> AttackResult``; ``iterations`` and
    ``evaluations`` equal ``steps``. Without a random start each row is independent of the rest
    of the batch; with one, the start depends on the row's position in the batch.

    Example::

        >>> result = PGD(epsilon=0.3, alpha=0.01, steps=40)(model, images, labels)
        >>> 1 - result.success.float().mean()                  # accuracy under attack
    """

    epsilon: float = 0.3
    alpha: float = 0.01
    steps: int = 40
    random_start: bool = True
    seed: int | None = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    check: bool = True

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon)
        check_real("alpha", self.alpha, strict=True)
        check_int("steps", self.steps, low=1)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"random_start must be True or False, got {self.random_start!r}")
        if self.seed is not None:
            check_int("seed", self.seed, low=0)
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        check_int("num_classes", self.num_classes, low=2)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start or self.epsilon == 0:
            return x.clone()
        if self.seed is None:
            noise = torch.rand(x.shape, device=x.device, dtype=x.dtype)
        else:
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        return (x + (2 * noise - 1) * self.epsilon).clamp(*self.bounds)

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
            seed = 0 if self.seed is None else self.seed
            x, y, t, src = expand_targets(
                net, x0, y0, targets, num_classes=self.num_classes, seed=seed
            )
            low, high = x - self.epsilon, x + self.epsilon
            adv = self._start(x)
            zero = 0
            for step in range(self.steps):
                grad = loss_ascent_gradient(net, adv, y, t)
                if step == 0:
                    zero = count_zero_gradients(grad)
                adv = torch.minimum(torch.maximum(adv + self.alpha * grad.sign(), low), high)
                adv = adv.clamp(*self.bounds)
            return finalize_result(
                net,
                adv_images=adv,
                images=x,
                labels=y,
                targets=t,
                source_index=src,
                iterations=self.steps,
                evaluations=self.steps,
                stop_reason="max_iterations",
                seconds=time.perf_counter() - start,
                extra={"attack": "pgd", "params": asdict(self), "zero_gradients": zero},
            )
