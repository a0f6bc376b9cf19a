"""Batched L-BFGS in torch with per-problem state: SciPy's L-BFGS-B without bounds.

Minimises N independent problems ``f_i(x_i)``, ``x_i`` in R^D, at once (contract in
:mod:`stadv.solvers.base`). Every problem keeps its own iterate, its own history of at most ``m``
curvature pairs and its own line search; one objective call per round evaluates the trial points
of all problems still running, and finished problems drop out of later calls.

Algorithm (per problem), following L-BFGS-B [BLNZ95, ZBLN97, MN11] without bounds, which is
plain L-BFGS [NW06, Alg. 7.4-7.5]:

* direction ``d = -H g`` by the two-loop recursion over the problem's pairs
  ``s_k = x_{k+1} - x_k``, ``y_k = g_{k+1} - g_k``, ``rho_k = 1 / (s_k^T y_k)``, with
  ``H_0 = gamma I``, ``gamma = s^T y / y^T y`` of the newest pair; with an empty history
  ``d = -g`` and the first step is ``min(1 / ||g||_2, 1e10)``, later ones start at 1;
* a pair is dropped when ``s^T y <= eps * (-g_k^T s)`` (L-BFGS-B's curvature test);
* step length by the Moré-Thuente line search [MT94] (MINPACK-2 ``dcsrch``/``dcstep``, the routine
  inside L-BFGS-B) for the strong Wolfe conditions
  ``f(x + a d) <= f(x) + c1 a g^T d`` and ``|g(x + a d)^T d| <= c2 |g^T d|``
  (defaults ``c1 = 1e-3``, ``c2 = 0.9``; ``xtol = 0.1``), at most ``max_linesearch`` trials;
  ``dcsrch`` warnings (rounding errors, ``xtol``) accept the current trial, as in L-BFGS-B;
  a trial that lands exactly on the problem's last evaluated point is answered from memory
  (SciPy's objective wrapper caches it too): a line-search step, not an evaluation;
* ``wolfe="weak"`` accepts on the weak Wolfe conditions instead: sufficient decrease and
  ``g(x + a d)^T d >= c2 g^T d`` (no upper bound on the slope), with the same ``dcsrch`` trial
  steps. On a non-smooth objective the strong condition can be unsatisfiable: at a kink where
  the slope jumps from about ``g^T d`` to a large positive value, no step has
  ``|slope| <= c2 |g^T d|``, and ``dcsrch`` shrinks its interval until ``xtol`` ends the search
  at a poor step. The weak conditions are what BFGS on non-smooth functions uses [LO13]. Not
  SciPy's semantics; measured on stAdv below (:class:`stadv.attack.StAdv`, ``wolfe``);
* a failed line search (limit reached, or ``g^T d >= 0``) drops the history and retries along
  ``-g`` (step 1); if the history was already empty the problem stops with ``"line_search"`` at
  its last accepted iterate.

Stopping (after each accepted step): ``"pgtol"`` if ``max_j |g_j| <= pgtol``, ``"factr"`` if
``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= factr * eps`` (``eps`` = float64 machine epsilon,
also for float32 problems, as SciPy), ``"max_iterations"``, ``"max_evaluations"`` (count reached),
then ``"callback"`` from ``should_stop``. ``"pgtol"`` is also tested at ``x0`` (0 iterations).
A non-finite ``f`` or ``g`` at a trial point stops the problem with ``"not_finite"`` at its last
accepted iterate.

Batching: each round, every problem in a line search proposes one trial and all trials go to one
``objective`` call (only those rows); every per-problem decision is a masked tensor operation, so
a round costs one host sync (which rows are still running) and a batch gives each problem's own
result. In float32 the ``factr`` test rarely fires before ``f`` stops changing (float64 ``eps``,
as SciPy), so float32 runs tend to end on ``pgtol``, an unchanged ``f`` or ``"line_search"``.

Mirrors SciPy (``scipy.optimize.minimize(method="L-BFGS-B", jac=True, options=dict(maxiter=,
gtol=pgtol, ftol=factr * eps, maxcor=history, maxls=max_linesearch, maxfun=))`` with no bounds):
the initial step, ``dcsrch`` with SciPy's constants, the curvature test, the restart on line-search
failure, ``pgtol`` before ``factr``, and the counts (``iterations`` = SciPy's ``nit``,
``evaluations`` = ``nfev``). In float64 the iterates agree with SciPy's to rounding (the two-loop
recursion and L-BFGS-B's compact representation give the same direction in exact arithmetic).

Differs from SciPy: the direction comes from the two-loop recursion (not the compact matrices and
their Cholesky factors); vectors stay in ``x0``'s dtype (scalars of the line search in float64);
when several stop tests hold at once, convergence (``pgtol``, ``factr``) is reported before the
limits and the callback (SciPy's driver tests the callback and limits first; ``x`` is the same);
``max_evaluations`` stops once the count *reaches* the limit (SciPy: once it exceeds ``maxfun``);
a non-finite value stops the problem instead of being fed to the line search; the square roots in
``dcstep`` clamp a rounding-negative discriminant at 0 instead of producing NaN.

References:
    [NW06] J. Nocedal, S. J. Wright. Numerical Optimization, 2nd ed., Springer 2006 (Ch. 3, 7).
    [BLNZ95] R. H. Byrd, P. Lu, J. Nocedal, C. Zhu. A limited memory algorithm for bound
        constrained optimization. SIAM J. Sci. Comput. 16(5), 1995.
    [ZBLN97] C. Zhu, R. H. Byrd, P. Lu, J. Nocedal. Algorithm 778: L-BFGS-B. ACM TOMS 23(4), 1997.
    [MN11] J. L. Morales, J. Nocedal. Remark on "Algorithm 778". ACM TOMS 38(1), 2011.
    [MT94] J. J. Moré, D. J. Thuente. Line search algorithms with guaranteed sufficient decrease.
        ACM TOMS 20(3), 1994.
    [LO13] A. S. Lewis, M. L. Overton. Nonsmooth optimization via quasi-Newton methods.
        Math. Program. 141, 2013.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from stadv.solvers.base import STOP_REASONS, Objective, SolverResult, StopFn

_EPS = float(torch.finfo(torch.float64).eps)
_XTOL = 0.1  # dcsrch's relative interval width (SciPy's L-BFGS-B)
_STPMIN = 0.0
_STPMAX = 1e10  # L-BFGS-B's ``big``: the step bound without box constraints
_XTRAPL = 1.1  # dcsrch's extrapolation range [stp + 1.1 (stp - stx), stp + 4 (stp - stx)]
_XTRAPU = 4.0
_P66 = 0.66
WOLFE = ("strong", "weak")

_RUNNING = -1
_PGTOL = STOP_REASONS.index("pgtol")
_FACTR = STOP_REASONS.index("factr")
_MAX_ITERATIONS = STOP_REASONS.index("max_iterations")
_MAX_EVALUATIONS = STOP_REASONS.index("max_evaluations")
_LINE_SEARCH = STOP_REASONS.index("line_search")
_CALLBACK = STOP_REASONS.index("callback")
_NOT_FINITE = STOP_REASONS.index("not_finite")


def lbfgs_minimize(
    objective: Objective,
    x0: Tensor,
    *,
    max_iterations: int = 1000,
    pgtol: float = 1e-5,
    factr: float = 1e7,
    history: int = 10,
    max_linesearch: int = 20,
    max_evaluations: int | None = None,
    wolfe_c1: float = 1e-3,
    wolfe_c2: float = 0.9,
    wolfe: str = "strong",
    should_stop: StopFn | None = None,
    max_active: int | None = None,
) -> SolverResult:
    """Minimise N independent problems with L-BFGS (SciPy's L-BFGS-B semantics, no bounds).

    See the module docstring for the algorithm, what mirrors SciPy and what differs.

    Args:
        objective: ``f, g = objective(x_rows, idx)`` with ``x_rows`` (M, D) and ``idx`` (M,)
            int64; returns ``f`` (M,) and ``g`` (M, D). Row values must not depend on other rows.
        x0: (N, D) floating start points; any dtype and device (results come back in both).
        max_iterations: accepted steps per problem (default 1000; 0 stops at ``x0``).
        pgtol: stop when ``max_j |g_j| <= pgtol`` (default 1e-5).
        factr: stop when the relative decrease of ``f`` is ``<= factr * eps64`` (default 1e7).
        history: ``m``, the number of (s, y) pairs kept (default 10).
        max_linesearch: evaluations allowed per line search (default 20).
        max_evaluations: stop a problem after an accepted step once it has used this many
            evaluations (default None: no limit).
        wolfe_c1: sufficient-decrease constant (default 1e-3, SciPy's ``ftol`` of ``dcsrch``).
        wolfe_c2: curvature constant of the Wolfe condition (default 0.9).
        wolfe: ``"strong"`` (default, L-BFGS-B's ``|g(a)^T d| <= c2 |g^T d|``) or ``"weak"``
            (``g(a)^T d >= c2 g^T d``, for non-smooth objectives; see the module docstring).
        should_stop: optional ``(K,) int64 -> (K,) bool``, asked after each accepted step for the
            problems still running; True stops a problem with ``"callback"``.
        max_active: continuous batching: at most this many problems in flight at once
            (default None: all N from the start). Problems join in index order as others
            finish: a joining problem's first evaluation (at ``x0``) rides in the same
            objective call as the running problems' trial points, so the batch stays full until
            the queue is empty and only the last ``max_active`` problems form a tail. The
            curvature histories are ``max_active`` slots reused by the problems that join, so
            memory is that of a ``max_active`` batch (plus O(N D) for iterates and gradients).
            Each problem's result is the same as with any other ``max_active``: problems are
            independent.

    Returns:
        :class:`SolverResult`: ``x`` (N, D) and ``f`` (N,) in ``x0``'s dtype and device (the last
        accepted iterate), ``iterations`` and ``evaluations`` (N,) int64, ``stop_reason``.

    Example:
        >>> a = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
        >>> def quad(x, idx):
        ...     return ((x - a[idx]) ** 2).sum(1), 2 * (x - a[idx])
        >>> res = lbfgs_minimize(quad, torch.zeros(2, 2, dtype=torch.float64))
        >>> torch.allclose(res.x, a), res.stop_reason
        (True, ('pgtol', 'pgtol'))
    """
    _check_arguments(
        x0,
        max_iterations=max_iterations,
        pgtol=pgtol,
        factr=factr,
        history=history,
        max_linesearch=max_linesearch,
        max_evaluations=max_evaluations,
        wolfe_c1=wolfe_c1,
        wolfe_c2=wolfe_c2,
        wolfe=wolfe,
        max_active=max_active,
    )
    weak = wolfe == "weak"
    n, dim = x0.shape
    dev, dt = x0.device, x0.dtype
    i64, f64 = torch.int64, torch.float64
    tol = factr * _EPS

    x = x0.detach().clone()
    iterations = torch.zeros(n, dtype=i64, device=dev)
    evaluations = torch.zeros(n, dtype=i64, device=dev)
    reason = torch.full((n,), _RUNNING, dtype=i64, device=dev)
    if n == 0:
        return SolverResult(x, x.new_zeros(0), iterations, evaluations, ())
    slots = n if max_active is None else min(max_active, n)

    # Per-problem state; a problem's values are set when it joins (its first evaluation).
    f = torch.zeros(n, dtype=f64, device=dev)
    g = torch.zeros_like(x)
    d = torch.zeros_like(x)
    stp = torch.zeros(n, dtype=f64, device=dev)
    search = _Search.empty(n, dev)
    # History ring buffers, one slot per problem in flight: slot ``head`` is written next,
    # ``count`` slots are in use (a problem joins with ``count = 0``, so a reused slot's old
    # pairs are masked out).
    s_hist = torch.zeros(slots, history, dim, dtype=dt, device=dev)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(slots, history, dtype=f64, device=dev)
    slot = torch.zeros(n, dtype=i64, device=dev)  # each problem's history slot
    gamma = torch.ones(n, dtype=f64, device=dev)
    count = torch.zeros(n, dtype=i64, device=dev)
    head = torch.zeros(n, dtype=i64, device=dev)
    ls_evals = torch.zeros(n, dtype=i64, device=dev)
    active = torch.zeros(n, dtype=torch.bool, device=dev)
    # Like SciPy's objective wrapper, remember each problem's last evaluated point: a trial that
    # lands on it exactly (a step lost in rounding, or dcsrch asking again for stp = stx) is
    # answered from memory. It still counts as a line-search step, not as an evaluation.
    f_last, g_last = torch.zeros_like(f), torch.zeros_like(g)
    cached = torch.zeros(n, dtype=torch.bool, device=dev)

    def join(rows: Tensor, f_raw: Tensor, g_raw: Tensor) -> None:
        """Problems ``rows`` start: their value and gradient at ``x0``, tests, first search."""
        f_new, g_new = f_raw.to(f64), g_raw
        f[rows], g[rows] = f_new, g_new
        evaluations[rows] = 1
        finite = torch.isfinite(f_new) & torch.isfinite(g_new).all(dim=1)
        code = torch.where(finite, _RUNNING, _NOT_FINITE)
        code = _stop_if(code, g_new.abs().amax(dim=1) <= pgtol, _PGTOL)
        if max_iterations == 0:
            code = _stop_if(code, torch.ones_like(finite), _MAX_ITERATIONS)
        start = _start_search(g_new, -g_new, f_new, count[rows], iterations[rows], wolfe_c1)
        code = _stop_if(code, start.failed, _LINE_SEARCH)
        reason[rows] = code
        d[rows], stp[rows] = start.d, start.stp
        search.put(rows, start.search)
        active[rows] = code == _RUNNING
        f_last[rows], g_last[rows] = f_new, g_new
        x_rows = x[rows]
        cached[rows] = (x_rows + start.stp.to(dt).unsqueeze(1) * start.d == x_rows).all(dim=1)

    # Slots are handed out on the host, from the one sync of a round (which problems still run).
    # The first ``slots`` problems join at once (all N without continuous batching).
    first = torch.arange(slots, device=dev)
    slot[first] = first
    join(first, *_evaluate(objective, x[first], first))
    queued = slots  # problems [0, queued) have joined
    holder = {i: i for i in range(slots)}  # problem -> slot, for those that may still run
    free: list[int] = []

    while True:
        idx, fresh, idx_host = _round_rows(active, cached)  # the one host sync of a round
        joining = idx.new_zeros(0)
        if queued < n:  # continuous batching: finished problems hand their slots on
            running = set(idx_host.tolist())
            for i in [i for i in holder if i not in running]:
                free.append(holder.pop(i))
            k = min(len(free), n - queued)
            if k > 0:
                joining = torch.arange(queued, queued + k, device=dev)
                taken, free = free[:k], free[k:]
                holder.update(zip(range(queued, queued + k), taken, strict=True))
                slot[joining] = torch.tensor(taken, dtype=i64).to(dev)
                queued += k
        if idx.numel() == 0 and joining.numel() == 0:
            break
        xi, fi, gi, di, stp_i = x[idx], f[idx], g[idx], d[idx], stp[idx]
        st_i = search.take(idx)
        it_i, ev_i, cnt_i, head_i = iterations[idx], evaluations[idx], count[idx], head[idx]
        reason_i = reason[idx]

        # One objective call for the trial points of all problems in a line search.
        x_try = xi + stp_i.to(dt).unsqueeze(1) * di
        f_try, g_try = f_last[idx], g_last[idx]
        if fresh.numel() > 0 or joining.numel() > 0:
            # the joining problems' first evaluation rides in the running problems' call
            m = fresh.numel()
            f_raw, g_raw = _evaluate(
                objective, torch.cat([x_try[fresh], x[joining]]), torch.cat([idx[fresh], joining])
            )
            f_try[fresh], g_try[fresh] = f_raw[:m].to(f64), g_raw[:m]
            ev_i[fresh] += 1
            if joining.numel() > 0:
                join(joining, f_raw[m:], g_raw[m:])
        if idx.numel() == 0:
            continue
        gd_try = _dot(g_try, di)
        finite = torch.isfinite(f_try) & torch.isfinite(g_try).all(dim=1)
        done, stp_next, st_next = _dcsrch(f_try, gd_try, stp_i, st_i, wolfe_c2, weak)
        nls_i = ls_evals[idx] + 1

        reason_i = torch.where(finite, reason_i, _NOT_FINITE)
        accepted = finite & done
        ls_failed = finite & ~done & (nls_i >= max_linesearch)

        # Accepted step: new iterate, counts and the stop tests.
        it_i = it_i + accepted.to(i64)
        x_new = torch.where(accepted.unsqueeze(1), x_try, xi)
        f_new = torch.where(accepted, f_try, fi)
        g_new = torch.where(accepted.unsqueeze(1), g_try, gi)
        scale = torch.maximum(torch.maximum(fi.abs(), f_try.abs()), torch.ones_like(fi))
        reason_i = _stop_if(reason_i, accepted & (g_try.abs().amax(dim=1) <= pgtol), _PGTOL)
        reason_i = _stop_if(reason_i, accepted & (fi - f_try <= tol * scale), _FACTR)
        reason_i = _stop_if(reason_i, accepted & (it_i >= max_iterations), _MAX_ITERATIONS)
        if max_evaluations is not None:
            reason_i = _stop_if(reason_i, accepted & (ev_i >= max_evaluations), _MAX_EVALUATIONS)
        if should_stop is not None:
            reason_i = _ask(should_stop, idx, accepted & (reason_i == _RUNNING), reason_i)
        going_on = accepted & (reason_i == _RUNNING)

        # Curvature pair (s, y) = (stp d, g_new - g), kept when s^T y > eps * (-g^T s).
        ginit = st_i.ginit
        sy = (gd_try - ginit) * stp_i
        keep = going_on & (sy > _EPS * (-ginit * stp_i))
        y_new = g_try - gi
        yy = _dot(y_new, y_new)
        s_new = stp_i.to(dt).unsqueeze(1) * di
        keep2 = keep.unsqueeze(1)
        slot_i = slot[idx]
        s_hist[slot_i, head_i] = torch.where(keep2, s_new, s_hist[slot_i, head_i])
        y_hist[slot_i, head_i] = torch.where(keep2, y_new, y_hist[slot_i, head_i])
        rho[slot_i, head_i] = torch.where(keep, 1.0 / sy, rho[slot_i, head_i])
        gamma_i = torch.where(keep, sy / yy, gamma[idx])
        cnt_i = torch.where(keep, torch.clamp(cnt_i + 1, max=history), cnt_i)
        head_i = torch.where(keep, (head_i + 1) % history, head_i)

        # Failed line search: drop the history and retry along -g, or stop if it was empty.
        reason_i = _stop_if(reason_i, ls_failed & (cnt_i == 0), _LINE_SEARCH)
        restart = ls_failed & (reason_i == _RUNNING)
        cnt_i = torch.where(restart, 0, cnt_i)
        gamma_i = torch.where(restart, 1.0, gamma_i)

        # New direction and line search for every problem that needs one.
        need = (going_on | restart) & (reason_i == _RUNNING)
        d_lbfgs = torch.zeros_like(g_new)  # rows still in a line search keep their direction
        rows = need.nonzero().squeeze(1)
        if rows.numel() > 0:
            d_lbfgs[rows] = _two_loop(
                g_new[rows],
                s_hist,
                y_hist,
                rho,
                gamma_i[rows],
                cnt_i[rows],
                head_i[rows],
                slot_i[rows],
            )
        start = _start_search(g_new, d_lbfgs, f_new, cnt_i, it_i, wolfe_c1)
        reason_i = _stop_if(reason_i, need & start.failed, _LINE_SEARCH)
        need = need & ~start.failed
        cnt_i = torch.where(need & start.reset, 0, cnt_i)
        gamma_i = torch.where(need & start.reset, 1.0, gamma_i)
        d_i = torch.where(need.unsqueeze(1), start.d, di)
        stp_i = torch.where(need, start.stp, stp_next)

        x[idx], f[idx], g[idx], d[idx], stp[idx] = x_new, f_new, g_new, d_i, stp_i
        search.put(idx, start.search.where(need, st_next))
        ls_evals[idx] = torch.where(need, 0, nls_i)
        iterations[idx], evaluations[idx], reason[idx] = it_i, ev_i, reason_i
        count[idx], head[idx], gamma[idx] = cnt_i, head_i, gamma_i
        f_last[idx], g_last[idx] = f_try, g_try
        cached[idx] = (x_new + stp_i.to(dt).unsqueeze(1) * d_i == x_try).all(dim=1)
        active[idx] = reason_i == _RUNNING

    return SolverResult(
        x=x,
        f=f.to(dt),
        iterations=iterations,
        evaluations=evaluations,
        stop_reason=tuple(STOP_REASONS[int(c)] for c in reason.tolist()),
    )


# --------------------------------------------------------------------------- helpers


def _check_arguments(
    x0: Tensor,
    *,
    max_iterations: int,
    pgtol: float,
    factr: float,
    history: int,
    max_linesearch: int,
    max_evaluations: int | None,
    wolfe_c1: float,
    wolfe_c2: float,
    wolfe: str,
    max_active: int | None,
) -> None:
    if not isinstance(x0, Tensor) or x0.dim() != 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating (N, D) tensor, got {shape}")
    for name, value, minimum in (
        ("max_iterations", max_iterations, 0),
        ("history", history, 1),
        ("max_linesearch", max_linesearch, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    for name, limit in (("max_evaluations", max_evaluations), ("max_active", max_active)):
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"{name} must be None or an int >= 1, got {limit!r}")
    for name, tol in (("pgtol", pgtol), ("factr", factr)):
        if not tol >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {tol!r}")
    if wolfe not in WOLFE:
        raise ValueError(f"wolfe must be one of {WOLFE}, got {wolfe!r}")
    if not 0.0 < wolfe_c1 < wolfe_c2 < 1.0:
        raise ValueError(
            f"need 0 < wolfe_c1 < wolfe_c2 < 1, got wolfe_c1={wolfe_c1!r}, wolfe_c2={wolfe_c2!r}"
        )


def _evaluate(objective: Objective, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    f, g = objective(x, idx)
    if f.shape != (x.shape[0],) or g.shape != x.shape:
        raise ValueError(
            f"objective must return f {(x.shape[0],)} and g {tuple(x.shape)}, "
            f"got {tuple(f.shape)} and {tuple(g.shape)}"
        )
    return f.detach(), g.detach().to(x.dtype)


def _round_rows(active: Tensor, cached: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Problems of this round (``idx``), the positions in ``idx`` that need an evaluation, and
    ``idx`` on the host (for the slot bookkeeping of continuous batching).

    One device-to-host copy of an (N,) code decides all three, so a round costs one sync.
    """
    code = (active.to(torch.int8) * (2 - cached.to(torch.int8))).cpu()  # 0 off, 1 cached, 2 new
    idx = code.nonzero().squeeze(1)
    fresh = (code[idx] == 2).nonzero().squeeze(1)
    return idx.to(active.device), fresh.to(active.device), idx


def _ask(should_stop: StopFn, idx: Tensor, asked: Tensor, reason: Tensor) -> Tensor:
    """Ask ``should_stop`` about the rows ``asked`` of ``idx``; mark those it stops."""
    rows = asked.nonzero().squeeze(1)
    if rows.numel() == 0:
        return reason
    answer = should_stop(idx[rows])
    if answer.shape != rows.shape:
        raise ValueError(f"should_stop must return {tuple(rows.shape)}, got {tuple(answer.shape)}")
    stop = torch.zeros_like(asked)
    stop[rows] = answer.to(device=stop.device, dtype=torch.bool)
    return _stop_if(reason, stop, _CALLBACK)


def _stop_if(reason: Tensor, cond: Tensor, code: int) -> Tensor:
    """Give ``code`` to the rows still running where ``cond`` holds (earlier reasons win)."""
    return torch.where(cond & (reason == _RUNNING), code, reason)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product, accumulated in float64: (M, D), (M, D) -> (M,)."""
    return (a * b).sum(dim=1, dtype=torch.float64)


def _two_loop(
    g: Tensor,
    s_hist: Tensor,
    y_hist: Tensor,
    rho: Tensor,
    gamma: Tensor,
    count: Tensor,
    head: Tensor,
    idx: Tensor,
) -> Tensor:
    """``-H g`` by the two-loop recursion [NW06, Alg. 7.4] over each row's own history.

    ``g`` (M, D) belongs to problems whose history slots are ``idx``; ``s_hist``/``y_hist``
    (S, m, D) and ``rho`` (S, m) are the ring buffers (one slot per problem in flight), ``count``/``head``/``gamma`` (M,) the rows' pair counts, next slots and
    ``H_0`` scalings. Unused slots are masked out, so ``count = 0`` gives ``-gamma g``.
    """
    m = s_hist.shape[1]
    order = (head.unsqueeze(1) - 1 - torch.arange(m, device=g.device)) % m  # (M, m) newest first
    rows = idx.unsqueeze(1)
    s_all, y_all, rho_all = s_hist[rows, order], y_hist[rows, order], rho[rows, order]
    used = torch.arange(m, device=g.device).unsqueeze(0) < count.unsqueeze(1)  # (M, m)
    rho_all = torch.where(used, rho_all, 0.0)  # unused slots contribute nothing
    q = g.clone()
    alphas: list[Tensor] = []
    for k in range(m):
        alpha = rho_all[:, k] * _dot(s_all[:, k], q)
        q = q - alpha.to(g.dtype).unsqueeze(1) * y_all[:, k]
        alphas.append(alpha)
    r = gamma.to(g.dtype).unsqueeze(1) * q
    for k in reversed(range(m)):
        beta = rho_all[:, k] * _dot(y_all[:, k], r)
        r = r + (alphas[k] - beta).to(g.dtype).unsqueeze(1) * s_all[:, k]
    return -r


@dataclass(frozen=True)
class _Search:
    """MINPACK-2 ``dcsrch`` state per row: (M,) float64 tensors, ``brackt``/``stage2`` bool.

    ``stx, fx, gx``: best step so far with its value and slope; ``sty, fy, gy``: the other end of
    the interval; ``stmin, stmax``: the allowed range of the next step; ``ginit = g^T d`` at 0.
    """

    brackt: Tensor
    stage2: Tensor
    finit: Tensor
    ginit: Tensor
    gtest: Tensor
    width: Tensor
    width1: Tensor
    stx: Tensor
    fx: Tensor
    gx: Tensor
    sty: Tensor
    fy: Tensor
    gy: Tensor
    stmin: Tensor
    stmax: Tensor

    def clone(self) -> _Search:
        """A copy whose fields share no storage (the start state aliases ``fx``/``fy``...)."""
        return _Search(**{fl.name: getattr(self, fl.name).clone() for fl in fields(self)})

    @staticmethod
    def empty(n: int, device: torch.device) -> _Search:
        """State for ``n`` rows, to be set by :meth:`put` before use."""
        values = {
            fl.name: torch.zeros(n, dtype=torch.float64, device=device) for fl in fields(_Search)
        }
        values["brackt"] = torch.zeros(n, dtype=torch.bool, device=device)
        values["stage2"] = torch.zeros(n, dtype=torch.bool, device=device)
        return _Search(**values)

    def take(self, idx: Tensor) -> _Search:
        return _Search(**{fl.name: getattr(self, fl.name)[idx] for fl in fields(self)})

    def put(self, idx: Tensor, other: _Search) -> None:
        for fl in fields(self):
            getattr(self, fl.name)[idx] = getattr(other, fl.name)

    def where(self, mask: Tensor, other: _Search) -> _Search:
        """Rows of ``self`` where ``mask``, else of ``other``."""
        return _Search(
            **{
                fl.name: torch.where(mask, getattr(self, fl.name), getattr(other, fl.name))
                for fl in fields(self)
            }
        )


@dataclass(frozen=True)
class _Start:
    """A new line search per row: direction ``d``, first step, ``dcsrch`` state; ``reset`` where
    the L-BFGS direction was not a descent direction and ``-g`` replaced it, ``failed`` where even
    that is not (``g = 0``)."""

    d: Tensor
    stp: Tensor
    search: _Search
    reset: Tensor
    failed: Tensor


def _start_search(
    g: Tensor, d: Tensor, f: Tensor, count: Tensor, iterations: Tensor, c1: float
) -> _Start:
    """L-BFGS-B's ``lnsrlb`` start: check descent, pick the first step, initialise ``dcsrch``."""
    gd = _dot(g, d)
    reset = (gd >= 0) & (count > 0)  # SciPy: info = -4 with a history -> refresh and retry
    d = torch.where(reset.unsqueeze(1), -g, d)
    gd = torch.where(reset, -_dot(g, g), gd)
    failed = ~(gd < 0)
    dnorm = _dot(d, d).sqrt()
    stp = torch.where(iterations == 0, (1.0 / dnorm).clamp(max=_STPMAX), 1.0)
    zero = torch.zeros_like(stp)
    width = torch.full_like(stp, _STPMAX - _STPMIN)
    search = _Search(
        brackt=torch.zeros_like(failed),
        stage2=torch.zeros_like(failed),
        finit=f,
        ginit=gd,
        gtest=c1 * gd,
        width=width,
        width1=width / 0.5,
        stx=zero,
        fx=f,
        gx=gd,
        sty=zero,
        fy=f,
        gy=gd,
        stmin=zero,
        stmax=stp + _XTRAPU * stp,
    )
    return _Start(d=d, stp=stp, search=search, reset=reset, failed=failed)


def _dcsrch(
    f: Tensor, g: Tensor, stp: Tensor, st: _Search, c2: float, weak: bool
) -> tuple[Tensor, Tensor, _Search]:
    """One call of MINPACK-2 ``dcsrch`` [MT94] per row, vectorised.

    ``weak``: accept on the weak Wolfe curvature condition ``g >= c2 * ginit`` instead of
    ``|g| <= c2 |ginit|`` (the steps proposed are ``dcsrch``'s either way).

    ``f``, ``g`` (M,) float64: value and slope ``g(x + stp d)^T d`` at the trial ``stp``.
    Returns ``done`` (convergence or a warning: accept this trial), the next trial step and the
    updated state (meaningless where ``done``).
    """
    ftest = st.finit + stp * st.gtest
    stage2 = st.stage2 | ((f <= ftest) & (g >= 0))
    warn = (
        (st.brackt & ((stp <= st.stmin) | (stp >= st.stmax)))
        | (st.brackt & (st.stmax - st.stmin <= _XTOL * st.stmax))
        | ((stp == _STPMAX) & (f <= ftest) & (g <= st.gtest))
        | ((stp == _STPMIN) & ((f > ftest) | (g >= st.gtest)))
    )
    if weak:  # g >= c2 * g(0): the slope rose enough, however far past a kink
        converged = (f <= ftest) & (g >= c2 * st.ginit)
    else:
        converged = (f <= ftest) & (g.abs() <= c2 * (-st.ginit))
    done = warn | converged

    # Stage 1 with a lower but not sufficiently lower value: work on psi(a) = f(a) - a * gtest.
    shift = torch.where(~stage2 & (f <= st.fx) & (f > ftest), st.gtest, 0.0)
    stx, fx, gx, sty, fy, gy, nxt, brackt = _dcstep(
        st.stx,
        st.fx - st.stx * shift,
        st.gx - shift,
        st.sty,
        st.fy - st.sty * shift,
        st.gy - shift,
        stp,
        f - stp * shift,
        g - shift,
        st.brackt,
        st.stmin,
        st.stmax,
    )
    fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift

    # Bisect when the interval did not shrink enough in two steps.
    width_now = (sty - stx).abs()
    nxt = torch.where(brackt & (width_now >= _P66 * st.width1), stx + 0.5 * (sty - stx), nxt)
    width1 = torch.where(brackt, st.width, st.width1)
    width = torch.where(brackt, width_now, st.width)
    stmin = torch.where(brackt, torch.minimum(stx, sty), nxt + _XTRAPL * (nxt - stx))
    stmax = torch.where(brackt, torch.maximum(stx, sty), nxt + _XTRAPU * (nxt - stx))
    nxt = nxt.clamp(min=_STPMIN, max=_STPMAX)
    stuck = brackt & ((nxt <= stmin) | (nxt >= stmax) | (stmax - stmin <= _XTOL * stmax))
    nxt = torch.where(stuck, stx, nxt)
    new = _Search(
        brackt=brackt,
        stage2=stage2,
        finit=st.finit,
        ginit=st.ginit,
        gtest=st.gtest,
        width=width,
        width1=width1,
        stx=stx,
        fx=fx,
        gx=gx,
        sty=sty,
        fy=fy,
        gy=gy,
        stmin=stmin,
        stmax=stmax,
    )
    return done, nxt, new


def _cubic_gamma(theta: Tensor, da: Tensor, db: Tensor) -> Tensor:
    """``s * sqrt((theta/s)^2 - (da/s)(db/s))``, ``s = max(|theta|, |da|, |db|)``, clamped at 0."""
    s = torch.maximum(theta.abs(), torch.maximum(da.abs(), db.abs()))
    return s * ((theta / s) ** 2 - (da / s) * (db / s)).clamp(min=0.0).sqrt()


def _dcstep(
    stx: Tensor,
    fx: Tensor,
    dx: Tensor,
    sty: Tensor,
    fy: Tensor,
    dy: Tensor,
    stp: Tensor,
    fp: Tensor,
    dp: Tensor,
    brackt: Tensor,
    stpmin: Tensor,
    stpmax: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """MINPACK-2 ``dcstep`` [MT94, Sec. 4] per row: safeguarded cubic/quadratic/secant step.

    All four cases are computed and the row's case selected (no branches per row). Returns the
    updated ``stx, fx, dx, sty, fy, dy``, the new step and ``brackt``.
    """
    sgnd = dp * torch.sign(dx)
    case1 = fp > fx  # higher value: minimum bracketed
    case2 = ~case1 & (sgnd < 0)  # lower value, slopes of opposite sign: bracketed
    case3 = ~case1 & ~case2 & (dp.abs() < dx.abs())  # same sign, slope magnitude decreases

    theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
    gam = _cubic_gamma(theta, dx, dp)

    g1 = torch.where(stp < stx, -gam, gam)
    r1 = ((g1 - dx) + theta) / (((g1 - dx) + g1) + dp)
    stpc1 = stx + r1 * (stp - stx)
    stpq1 = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
    stpf1 = torch.where(
        (stpc1 - stx).abs() < (stpq1 - stx).abs(), stpc1, stpc1 + (stpq1 - stpc1) / 2.0
    )

    g23 = torch.where(stp > stx, -gam, gam)
    p23 = (g23 - dp) + theta
    stpq = stp + (dp / (dp - dx)) * (stx - stp)  # secant step, cases 2 and 3
    stpc2 = stp + p23 / (((g23 - dp) + g23) + dx) * (stx - stp)
    stpf2 = torch.where((stpc2 - stp).abs() > (stpq - stp).abs(), stpc2, stpq)

    r3 = p23 / ((g23 + (dx - dp)) + g23)
    stpc3 = torch.where(
        (r3 < 0) & (g23 != 0), stp + r3 * (stx - stp), torch.where(stp > stx, stpmax, stpmin)
    )
    closer = torch.where((stpc3 - stp).abs() < (stpq - stp).abs(), stpc3, stpq)
    reach = stp + _P66 * (sty - stp)
    stpf3_b = torch.where(stp > stx, torch.minimum(reach, closer), torch.maximum(reach, closer))
    farther = torch.where((stpc3 - stp).abs() > (stpq - stp).abs(), stpc3, stpq)
    stpf3_u = torch.maximum(stpmin, torch.minimum(stpmax, farther))
    stpf3 = torch.where(brackt, stpf3_b, stpf3_u)

    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    g4 = _cubic_gamma(theta4, dy, dp)
    g4 = torch.where(stp > sty, -g4, g4)
    r4 = ((g4 - dp) + theta4) / (((g4 - dp) + g4) + dy)
    stpf4 = torch.where(brackt, stp + r4 * (sty - stp), torch.where(stp > stx, stpmax, stpmin))

    stpf = torch.where(case1, stpf1, torch.where(case2, stpf2, torch.where(case3, stpf3, stpf4)))

    # Update the interval that contains a minimiser.
    new_sty = torch.where(case1, stp, torch.where(case2, stx, sty))
    new_fy = torch.where(case1, fp, torch.where(case2, fx, fy))
    new_dy = torch.where(case1, dp, torch.where(case2, dx, dy))
    new_stx = torch.where(case1, stx, stp)
    new_fx = torch.where(case1, fx, fp)
    new_dx = torch.where(case1, dx, dp)
    return new_stx, new_fx, new_dx, new_sty, new_fy, new_dy, stpf, brackt | case1 | case2
