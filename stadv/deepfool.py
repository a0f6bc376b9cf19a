"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, arXiv 1511.04599), multi-class.

At each iterate x_i the classifier is linearised around x_i; with k_0 the true label,
``f'_k = Z_k(x_i) - Z_{k_0}(x_i)`` and ``w'_k = grad Z_k(x_i) - grad Z_{k_0}(x_i)`` for every
class k != k_0, the closest linearised boundary and the step to it are (Algorithm 2 and its
L_p form, Section 3.2; q = p / (p - 1) the dual norm)::

    l   = argmin_{k != k_0} |f'_k| / ||w'_k||_q
    r_i = |f'_l| / ||w'_l||_2^2 * w'_l                  (norm="l2":   p = 2,   q = 2)
    r_i = |f'_l| / ||w'_l||_1   * sign(w'_l)            (norm="linf": p = inf, q = 1)

    r = sum_i r_i,      x_{i+1} = clip(x + (1 + overshoot) * r)

until the model's prediction on x_{i+1} leaves k_0 or ``max_iterations`` steps were taken. As in
the authors' code (``deepfool.py``), 1e-4 is added to ``|f'_l|`` so a step lands just past the
linearised boundary, and the overshoot multiplies the *total* perturbation; unlike it, every
iterate is clipped to ``bounds`` (the returned image is a valid image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from stadv.attack_base import AttackBatch, PixelAttack, check_attack_fields
from stadv.options import check_choice, check_int, check_real
from stadv.precision import Precision
from stadv.result import AttackResult
from stadv.targets import TargetSpec

DeepFoolNorm = Literal["l2", "linf"]
NORMS: tuple[str, ...] = ("l2", "linf")
#: Added to |f'_l| so that a step crosses the linearised boundary (the authors' code).
_CROSS = 1e-4


@dataclass(frozen=True, kw_only=True)
class DeepFool(PixelAttack):
    """DeepFool, multi-class, L2 or L-inf (Moosavi-Dezfooli et al. 2016). Untargeted only.

    Args (keyword-only; defaults in brackets, the paper's):
        norm: ``"l2"`` (Algorithm 2) or ``"linf"`` (the p = inf case of Section 3.2) ["l2"].
        overshoot: eta, the total perturbation is scaled by (1 + eta) [0.02]. Finite, >= 0.
        max_iterations: linearisation steps per image [50]. >= 1.
        bounds: valid pixel range (low, high) [(0.0, 1.0)]; every iterate is clipped to it.
        num_classes: K, classes of the model [10]; every other class is a candidate boundary.
        seed: unused by DeepFool (deterministic); kept for the shared target plumbing [0].
        check: warn (:mod:`stadv.sanity`) about probability outputs or zero gradients [True].
        precision: the policy of the attack's model evaluations, ``"fp32"`` [default,
            strict], ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs) or ``"bf16"``
            (bfloat16 autocast); the verdict on the returned images is strict fp32 in every
            case (:mod:`stadv.precision`).

    Call: ``attack(model, images, labels) -> AttackResult`` with ``images`` (N, C, H, W) in
    ``bounds`` and ``labels`` (N,); passing ``targets`` raises ``ValueError`` (DeepFool moves
    to the *nearest* boundary, whichever class lies behind it). Batched with per-sample
    stopping: an image whose prediction has left its label leaves the active set, so later
    iterations cost only the images still running. Per iteration the active images take one
    forward pass and K backward passes (one per class, over the whole active batch; each
    row's gradient is independent of the others). ``iterations`` counts steps taken (0 for an
    image the model already misclassifies), ``evaluations`` forward passes.
    ``extra["stopped"]`` is True where the prediction left the label within the cap.

    Example::

        >>> result = DeepFool(max_iterations=50, overshoot=0.02)(model, images, labels)
        >>> rho = (result.l2 / images.flatten(1).norm(dim=1)).mean()   # the paper's rho_adv
    """

    name: ClassVar[str] = "deepfool"
    label: ClassVar[str] = "DeepFool"

    norm: DeepFoolNorm = "l2"
    overshoot: float = 0.02
    max_iterations: int = 50
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    seed: int = 0
    check: bool = True
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_choice("norm", self.norm, NORMS))
        check_real("overshoot", self.overshoot)
        check_int("max_iterations", self.max_iterations, low=1)
        check_attack_fields(self)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult:
        if targets is not None:
            raise ValueError(
                f"DeepFool is untargeted: call it with targets=None, got targets={targets!r}"
            )
        return super().__call__(model, images, labels, None)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        net, x, y = batch.net, batch.images, batch.labels
        m = x.shape[0]
        dev = x.device
        adv = x.clone()
        r_tot = torch.zeros_like(x)
        steps = torch.zeros(m, dtype=torch.int64, device=dev)
        forwards = torch.zeros(m, dtype=torch.int64, device=dev)
        stopped = torch.zeros(m, dtype=torch.bool, device=dev)
        idx = torch.arange(m, device=dev)
        for _ in range(self.max_iterations + 1):
            if idx.numel() == 0:
                break
            xa = adv[idx].clone().requires_grad_(True)
            with torch.enable_grad():
                logits = net(xa)
                forwards[idx] += 1
                left = logits.argmax(dim=1) != y[idx]
                stopped[idx[left]] = True
                run = (~left) & (steps[idx] < self.max_iterations)
                if not bool(run.any()):
                    break
                grads = self._class_gradients(logits, xa, run)
            idx, xa, logits = idx[run], xa[run], logits[run].detach()
            r = self._step(logits, grads, y[idx])
            r_tot[idx] += r
            adv[idx] = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(*self.bounds)
            steps[idx] += 1
        return batch.finish(
            adv,
            iterations=steps,
            evaluations=forwards,
            stop_reason=["boundary_crossed" if bool(s) else "max_iterations" for s in stopped],
            extra={
                "attack": self.name,
                "params": asdict(self),
                "stopped": stopped.cpu(),
                # the paper's rho_adv per attack: ||r||_2 / ||x||_2
                "rho": ((adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).cpu(),
            },
        )

    def _class_gradients(
        self, logits: torch.Tensor, xa: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """grad_x Z_k for every class k, (A, K, C, H, W) for the rows still running.

        One backward pass per class over the whole active batch (summing a column over rows
        keeps each row's gradient its own).
        """
        k = logits.shape[1]
        out = []
        for c in range(k):
            (g,) = torch.autograd.grad(logits[:, c].sum(), xa, retain_graph=c < k - 1)
            out.append(g[rows])
        return torch.stack(out, dim=1)

    def _step(self, logits: torch.Tensor, grads: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The minimal step r_i (A, C, H, W) to the closest linearised boundary."""
        a = logits.shape[0]
        rows = torch.arange(a, device=logits.device)
        f = logits - logits[rows, y].unsqueeze(1)  # (A, K): f'_k
        w = (grads - grads[rows, y].unsqueeze(1)).flatten(2)  # (A, K, D): w'_k
        dual = w.norm(p=2, dim=2) if self.norm == "l2" else w.abs().sum(dim=2)
        dist = f.abs() / dual
        dist[rows, y] = float("inf")
        # A zero gradient difference (dual == 0) gives inf or nan: never the closest boundary.
        dist = torch.nan_to_num(dist, nan=float("inf"))
        best = dist.argmin(dim=1)
        wl = w[rows, best]  # (A, D)
        fl = f[rows, best].abs() + _CROSS
        if self.norm == "l2":
            scale = fl / wl.pow(2).sum(dim=1).clamp_min(1e-30)
            r = scale.unsqueeze(1) * wl
        else:
            scale = fl / wl.abs().sum(dim=1).clamp_min(1e-30)
            r = scale.unsqueeze(1) * wl.sign()
        return r.view_as(grads[:, 0])
