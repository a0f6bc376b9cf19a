"""Batched Adam: a first-order alternative to L-BFGS for N independent problems.

Adam (Kingma & Ba, ICLR 2015, arXiv 1412.6980), Algorithm 1, per problem i with its own
moments, all rows updated in one vectorised step::

    m_t = beta1 m_{t-1} + (1 - beta1) g_t          v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    x_t = x_{t-1} - lr * (m_t / (1 - beta1^t)) / (sqrt(v_t / (1 - beta2^t)) + eps)

which is ``torch.optim.Adam``'s update (no weight decay, no AMSGrad). Carlini & Wagner (2017)
use Adam for their attacks; stAdv's paper uses L-BFGS (:mod:`stadv.solvers.lbfgs`).
"""

from __future__ import annotations

import math

import torch

from stadv.solvers.base import Objective, SolverResult, StopFn


def adam_minimize(
    objective: Objective,
    x0: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    should_stop: StopFn | None = None,
) -> SolverResult:
    """Run ``steps`` Adam steps on N independent problems; returns the LAST iterate.

    The objective is evaluated at x0 and after every step, only for the rows still running, so
    f is the value at the returned x and ``evaluations = iterations + 1``. After each step
    ``should_stop(idx)`` is asked for the running rows (the objective's latest call was at their
    new iterate); a True ends the row with reason ``"callback"``. A row whose f or g is not
    finite ends with ``"not_finite"`` at that iterate; the others end with ``"max_iterations"``.

    Args:
        objective: ``objective(x_rows (M, D), idx (M,) int64) -> (f (M,), g (M, D))``.
        x0: (N, D) floating start points; not modified.
        steps: number of Adam steps T [500]; 0 returns x0.
        lr: step size alpha [0.01].
        betas: moment decay rates (beta1, beta2), each in [0, 1) [(0.9, 0.999)].
        eps: denominator term epsilon >= 0 [1e-8].
        should_stop: optional ``should_stop(idx) -> (M,) bool``.

    Returns:
        :class:`SolverResult`: x (N, D), f (N,) in x0's dtype and device; iterations (steps
        taken) and evaluations per problem, int64.

    Example::

        res = adam_minimize(objective, torch.zeros(8, 2 * 28 * 28), steps=200, lr=0.01)
    """
    _check_arguments(x0, steps, lr, betas, eps)
    beta1, beta2 = float(betas[0]), float(betas[1])
    device = x0.device
    n = x0.shape[0]
    x = x0.detach().clone()
    f = torch.full((n,), math.nan, dtype=x0.dtype, device=device)
    iterations = torch.zeros(n, dtype=torch.int64, device=device)
    evaluations = torch.zeros(n, dtype=torch.int64, device=device)
    reasons = ["max_iterations"] * n
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)

    active = torch.arange(n, device=device)
    grad = _evaluate(objective, x, active, f, evaluations)
    active, grad = _drop(active, grad, _not_finite(f[active], grad), reasons, "not_finite")
    for t in range(1, steps + 1):
        if active.numel() == 0:
            break
        m[active] = beta1 * m[active] + (1.0 - beta1) * grad
        v[active] = beta2 * v[active] + (1.0 - beta2) * grad.square()
        m_hat = m[active] / (1.0 - beta1**t)
        v_hat = v[active] / (1.0 - beta2**t)
        x[active] = x[active] - lr * m_hat / (v_hat.sqrt() + eps)
        iterations[active] = t
        grad = _evaluate(objective, x, active, f, evaluations)
        active, grad = _drop(active, grad, _not_finite(f[active], grad), reasons, "not_finite")
        if should_stop is not None and active.numel() > 0:
            stop = should_stop(active)
            if tuple(stop.shape) != (active.numel(),):
                raise ValueError(
                    f"should_stop must return ({active.numel()},) bools, "
                    f"got shape {tuple(stop.shape)}"
                )
            active, grad = _drop(
                active, grad, stop.to(device=device, dtype=torch.bool), reasons, "callback"
            )
    return SolverResult(
        x=x, f=f, iterations=iterations, evaluations=evaluations, stop_reason=tuple(reasons)
    )


def _check_arguments(
    x0: torch.Tensor, steps: int, lr: float, betas: tuple[float, float], eps: float
) -> None:
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating (N, D) tensor, got {shape}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not _is_number(lr) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if (
        len(betas) != 2
        or not all(_is_number(b) for b in betas)
        or not all(0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not _is_number(eps) or not (0 <= eps < math.inf):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _evaluate(
    objective: Objective,
    x: torch.Tensor,
    active: torch.Tensor,
    f: torch.Tensor,
    evaluations: torch.Tensor,
) -> torch.Tensor:
    """Evaluate the active rows, store their f, count the evaluation; returns g (M, D)."""
    rows = x[active]
    fa, ga = objective(rows, active)
    if tuple(fa.shape) != (rows.shape[0],) or tuple(ga.shape) != tuple(rows.shape):
        raise ValueError(
            f"objective must return f ({rows.shape[0]},) and g {tuple(rows.shape)}, "
            f"got {tuple(fa.shape)} and {tuple(ga.shape)}"
        )
    f[active] = fa.detach().to(dtype=f.dtype, device=f.device)
    evaluations[active] += 1
    return ga.detach().to(dtype=x.dtype, device=x.device)


def _not_finite(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return ~(torch.isfinite(f) & torch.isfinite(g).all(dim=1))


def _drop(
    active: torch.Tensor,
    grad: torch.Tensor,
    done: torch.Tensor,
    reasons: list[str],
    reason: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """End the rows flagged ``done`` with ``reason``; returns the remaining rows and their g."""
    if not bool(done.any()):
        return active, grad
    for i in active[done].tolist():
        reasons[i] = reason
    keep = ~done
    return active[keep], grad[keep]
