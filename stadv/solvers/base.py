"""What every batched solver takes and returns.

A solver minimises N independent problems at once. Problem i has variable ``x[i]`` (D,).
The objective is evaluated only for the rows that still need work::

    f, g = objective(x_rows, idx)

with ``x_rows`` (M, D) and ``idx`` (M,) int64 the problem indices of those rows; it returns
``f`` (M,) and ``g`` (M, D) = d f / d x_rows. Problems are independent: the value of row i
must not depend on the other rows, so a batch gives the same result as each problem alone.

``should_stop(idx) -> (M,) bool``, when given, is asked after each accepted iteration for the
problems still running; a True ends that problem with reason ``"callback"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
StopFn = Callable[[torch.Tensor], torch.Tensor]

#: Stop reasons, as in SciPy's L-BFGS-B messages.
STOP_REASONS: tuple[str, ...] = (
    "pgtol",  # max |g| <= pgtol
    "factr",  # (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= factr * eps
    "max_iterations",  # iteration limit
    "max_evaluations",  # function-evaluation limit
    "line_search",  # the line search found no acceptable step
    "callback",  # should_stop said so
    "not_finite",  # f or g not finite
)


@dataclass(frozen=True)
class SolverResult:
    """Per-problem outcome of a batched solver.

    x: (N, D) final iterate; f: (N,) objective there; iterations, evaluations: (N,) int64;
    stop_reason: one of :data:`STOP_REASONS` per problem.
    """

    x: torch.Tensor
    f: torch.Tensor
    iterations: torch.Tensor
    evaluations: torch.Tensor
    stop_reason: tuple[str, ...]
