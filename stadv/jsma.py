"""JSMA: the Jacobian-based saliency map attack (Papernot et al., IEEE EuroS&P 2016, arXiv
1511.07528), targeted, with the pairwise saliency map.

Each iteration takes the forward derivative of the logits Z at the current image x, for the
target t and the other classes together,
``a_p = dZ_t / dx_p`` and ``b_p = sum_{j != t} dZ_j / dx_p``, and over the pairs (p, q) of
distinct features still in the search domain Gamma picks (Algorithm 3, theta > 0)::

    (p*, q*) = argmax_{p != q in Gamma} (a_p + a_q) * |b_p + b_q|
               subject to  a_p + a_q > 0  and  b_p + b_q < 0

(theta < 0: ``a_p + a_q < 0`` and ``b_p + b_q > 0``, the same score), then sets
``x_{p*}, x_{q*} <- clip(x + theta * (high - low))`` and removes both from Gamma. It stops when
the model predicts t, when Gamma holds no admissible pair, or after
``floor(gamma * D / 2)`` iterations (D = C * H * W features), so at most a fraction gamma of the
features ever changes. Gamma starts as the features that can still move (x < high for
theta > 0, x > low for theta < 0). As in cleverhans' ``SaliencyMapMethod``, the logits are
differentiated and a chosen feature leaves Gamma whatever its new value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from stadv.attack_base import AttackBatch, PixelAttack, check_attack_fields
from stadv.options import check_int, check_real
from stadv.precision import Precision
from stadv.result import AttackResult
from stadv.targets import TargetSpec


@dataclass(frozen=True, kw_only=True)
class JSMA(PixelAttack):
    """Jacobian-based saliency map attack, pairwise, targeted (Papernot et al. 2016).

    Args (keyword-only; defaults in brackets, the paper's MNIST setting):
        theta: change of a chosen feature, in units of ``high - low`` [1.0: set it to the
            maximum]. Finite, non-zero, in [-1, 1]; the sign picks increasing or decreasing.
        gamma: largest fraction of the D = C * H * W features that may change [0.145]. In
            (0, 1].
        chunk: runtime only, not an option: images whose D x D saliency maps are scored at
            once [8]; bounds the memory (8 MNIST images: ~20 MB a map), does not change the
            result. >= 1.
        bounds: valid pixel range (low, high) [(0.0, 1.0)].
        num_classes: classes of the model [10]. seed: seeds the ``"random"`` targets [0].
        check: warn (:mod:`stadv.sanity`) about probability outputs or zero gradients [True].
        precision: the policy of the attack's model evaluations, ``"fp32"`` [default,
            strict], ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs) or ``"bf16"``
            (bfloat16 autocast); the verdict on the returned images is strict fp32 in every
            case (:mod:`stadv.precision`).

    Call: ``attack(model, images, labels, targets) -> AttackResult`` with ``images``
    (N, C, H, W) in ``bounds``, ``labels`` (N,) and ``targets`` a tensor (N,) or a protocol of
    :mod:`stadv.targets`; ``targets=None`` raises ``ValueError`` (JSMA climbs towards one class).
    Batched with per-sample stopping: per iteration the images still running take one forward
    and two backward passes (Z_t and the sum of all logits, over the whole active batch).
    ``iterations`` counts pair changes, ``evaluations`` forward passes;
    ``extra["changed_fraction"]`` (M,) is the fraction of features that differ from the source.

    Example::

        >>> result = JSMA(theta=1.0, gamma=0.145)(model, images, labels, targets="random")
        >>> result.success_rate, result.extra["changed_fraction"].mean()
    """

    name: ClassVar[str] = "jsma"
    label: ClassVar[str] = "JSMA"

    theta: float = 1.0
    gamma: float = 0.145
    chunk: int = field(default=8, metadata={"option": False})
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    seed: int = 0
    check: bool = True
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_real("theta", self.theta, low=-1.0)
        if self.theta == 0 or self.theta > 1:
            raise ValueError(f"theta must be non-zero and in [-1, 1], got {self.theta!r}")
        check_real("gamma", self.gamma, strict=True)
        if self.gamma > 1:
            raise ValueError(f"gamma must be a fraction in (0, 1], got {self.gamma!r}")
        check_int("chunk", self.chunk, low=1)
        check_attack_fields(self)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult:
        if targets is None:
            raise ValueError(
                "JSMA is a targeted attack: pass targets (a tensor of classes or one of "
                "'all', 'random', 'least-likely'), got targets=None"
            )
        return super().__call__(model, images, labels, targets)

    def max_pairs(self, features: int) -> int:
        """Iterations allowed for ``features`` features: ``floor(gamma * features / 2)``."""
        return math.floor(self.gamma * features / 2 + 1e-9)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        net, x, t = batch.net, batch.images, batch.targets
        assert t is not None  # __call__ refuses untargeted calls
        m = x.shape[0]
        dev = x.device
        low, high = self.bounds
        flat = x.flatten(1).clone()
        d = flat.shape[1]
        limit = self.max_pairs(d)
        domain = flat < high if self.theta > 0 else flat > low
        iters = torch.zeros(m, dtype=torch.int64, device=dev)
        forwards = torch.zeros(m, dtype=torch.int64, device=dev)
        reasons = ["gamma"] * m
        idx = torch.arange(m, device=dev)
        while idx.numel():
            xa = flat[idx].view(-1, *x.shape[1:]).clone().requires_grad_(True)
            with torch.enable_grad():
                logits = net(xa)
                forwards[idx] += 1
                hit = logits.argmax(dim=1) == t[idx]
                run = ~hit & (iters[idx] < limit)
                for i in idx[hit].tolist():
                    reasons[i] = "target_reached"
                if not bool(run.any()):
                    break
                tgt = logits.gather(1, t[idx].unsqueeze(1)).sum()
                (g_t,) = torch.autograd.grad(tgt, xa, retain_graph=True)
                (g_all,) = torch.autograd.grad(logits.sum(), xa)
            idx = idx[run]
            g_t = g_t[run].flatten(1)
            g_o = g_all[run].flatten(1) - g_t
            p, q, found = self._best_pairs(g_t, g_o, domain[idx])
            for i in idx[~found].tolist():
                reasons[i] = "no_pair"
            idx, p, q = idx[found], p[found], q[found]
            step = self.theta * (high - low)
            for col in (p, q):
                flat[idx, col] = (flat[idx, col] + step).clamp(low, high)
                domain[idx, col] = False
            iters[idx] += 1
        adv = flat.view_as(x)
        changed = (adv != x).flatten(1).float().mean(dim=1)
        return batch.finish(
            adv,
            iterations=iters,
            evaluations=forwards,
            stop_reason=reasons,
            extra={
                "attack": self.name,
                "params": asdict(self),
                "max_iterations": limit,
                "changed_fraction": changed.cpu(),
            },
        )

    def _best_pairs(
        self, g_t: torch.Tensor, g_o: torch.Tensor, domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: the best admissible pair (p, q) and whether one exists; inputs (A, D)."""
        a, d = g_t.shape
        sign = 1.0 if self.theta > 0 else -1.0
        ps, qs, oks = [], [], []
        for s in range(0, a, self.chunk):
            gt, go = g_t[s : s + self.chunk], g_o[s : s + self.chunk]
            # Shifting a_p by -2 max|a| (theta > 0) outside Gamma makes every pair that touches
            # such a feature fail a_p + a_q > 0: no D x D domain mask is needed.
            big = 2 * gt.abs().amax(dim=1, keepdim=True)
            gt = torch.where(domain[s : s + self.chunk], gt, gt - sign * big)
            alpha = gt.unsqueeze(2) + gt.unsqueeze(1)
            beta = go.unsqueeze(2) + go.unsqueeze(1)
            # relu(sign * alpha) * relu(-sign * beta) > 0 exactly on the admissible pairs,
            # where it equals the saliency (a_p + a_q) * |b_p + b_q| (in absolute value).
            score = alpha.mul_(sign).clamp_(min=0).mul_(beta.mul_(-sign).clamp_(min=0))
            score.diagonal(dim1=1, dim2=2).zero_()
            value, best = score.flatten(1).max(dim=1)
            oks.append(value > 0)
            ps.append(best // d)
            qs.append(best % d)
        return torch.cat(ps), torch.cat(qs), torch.cat(oks)
