"""SciPy's own L-BFGS-B, one optimiser per problem, with the objective batched across problems.

The reference solver for the paper's L-BFGS (Xiao et al., ICLR 2018, arXiv 1801.02612,
Section 3: "we use L-BFGS to solve the optimisation problem"). Problem i is minimised by

    scipy.optimize.minimize(fun_i, x0[i], jac=True, method="L-BFGS-B", options=dict(
        maxiter=max_iterations, gtol=pgtol, ftol=factr * eps, maxcor=history,
        maxls=max_linesearch, maxfun=max_evaluations))

so ``pgtol``, ``factr``, ``history`` and the stopping rules mean exactly what SciPy says
(Byrd, Lu, Nocedal & Zhu 1995; Morales & Nocedal 2011):

* ``pgtol``: stop when ``max_j |g_j| <= pgtol`` (no bounds, so the projected gradient is g);
* ``factr``: stop when ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= factr * eps``.

``batched=True`` runs each problem's optimiser in its own thread. Every thread's ``fun(x)``
posts x to a coordinator in the calling thread, which waits until every still-running
optimiser has posted, evaluates all posted rows in ONE objective call and hands each thread
its (f, g). Only public ``scipy.optimize.minimize`` is used (BoTorch's
``fmin_l_bfgs_b_batched`` ports SciPy internals instead), so the iterates are SciPy's, bit for
bit, whatever the SciPy version. ``batched=False`` is the plain one-problem-at-a-time loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from stadv.solvers.base import Objective, SolverResult, StopFn

#: SciPy's ``maxfun`` when no evaluation limit is asked for (SciPy's own default is 15000).
_NO_LIMIT = int(np.iinfo(np.int64).max)

# Substrings of SciPy's L-BFGS-B messages, checked in order. The wording changed over versions
# (Fortran "REL_REDUCTION_OF_F", C "RELATIVE REDUCTION OF F"; "TOTAL NO. of f AND g
# EVALUATIONS" vs "TOTAL NO. OF F,G EVALUATIONS"; "ABNORMAL_TERMINATION_IN_LNSRCH" vs
# "ABNORMAL: "), so only the stable words are matched.
_MESSAGE_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("PGTOL", "PROJECTED GRADIENT IS SUFFICIENTLY SMALL"), "pgtol"),
    (("FACTR",), "factr"),
    (("ITERATIONS",), "max_iterations"),
    (("EVALUATIONS",), "max_evaluations"),
    (("ABNORMAL", "LNSRCH", "WARNING"), "line_search"),
)

# evaluate(x (D,) float64) -> (f, g (D,) float64); ask_stop() -> bool.
_Evaluate = Callable[[np.ndarray], tuple[float, np.ndarray]]
_AskStop = Callable[[], bool]


@dataclass(frozen=True)
class _Settings:
    max_iterations: int
    pgtol: float
    factr: float
    history: int
    max_linesearch: int
    max_evaluations: int | None

    def scipy_options(self) -> dict[str, Any]:
        return {
            "maxiter": self.max_iterations,
            "gtol": self.pgtol,
            "ftol": self.factr * float(np.finfo(float).eps),
            "maxcor": self.history,
            "maxls": self.max_linesearch,
            "maxfun": _NO_LIMIT if self.max_evaluations is None else self.max_evaluations,
        }


@dataclass(frozen=True)
class _Outcome:
    result: Any  # scipy.optimize.OptimizeResult
    stopped_by_callback: bool


def scipy_lbfgsb_minimize(
    objective: Objective,
    x0: torch.Tensor,
    *,
    max_iterations: int = 1000,
    pgtol: float = 1e-5,
    factr: float = 1e7,
    history: int = 10,
    max_linesearch: int = 20,
    max_evaluations: int | None = None,
    should_stop: StopFn | None = None,
    batched: bool = True,
) -> SolverResult:
    """Minimise N independent problems with SciPy's L-BFGS-B (see the module docstring).

    Args:
        objective: ``objective(x_rows (M, D), idx (M,) int64) -> (f (M,), g (M, D))``
            (:mod:`stadv.solvers.base`); rows come in ``x0``'s dtype and device.
        x0: (N, D) floating start points; not modified. SciPy works in float64.
        max_iterations: SciPy's ``maxiter`` [1000]. ``0`` returns ``x0`` after one evaluation
            (SciPy itself would still take one iteration).
        pgtol: SciPy's ``gtol``: stop when ``max |g| <= pgtol`` [1e-5].
        factr: ``ftol = factr * eps``: stop on a relative reduction of f below it [1e7].
        history: SciPy's ``maxcor``, the number of stored correction pairs m [10].
        max_linesearch: SciPy's ``maxls``, line-search steps per iteration [20].
        max_evaluations: SciPy's ``maxfun`` [None: no limit]. As in SciPy, it is checked at
            the end of an iteration, so the count can exceed it by one line search.
        should_stop: ``should_stop(idx) -> (M,) bool``, asked after each accepted iteration
            (through SciPy's ``callback`` raising ``StopIteration``); True ends the problem
            with reason ``"callback"`` at that iterate. When it is asked, the objective's most
            recent call included the problem's accepted iterate (batched mode answers stop
            queries before the next evaluations).
        batched: True [default]: one SciPy optimiser per problem in its own thread, all
            pending rows evaluated in one objective call. False: one problem after another,
            each objective call with a single row.

    Returns:
        :class:`SolverResult` with ``x`` (N, D) and ``f`` (N,) in ``x0``'s dtype and device,
        ``iterations = nit``, ``evaluations = nfev`` and SciPy's stop reason per problem.

    Example::

        res = scipy_lbfgsb_minimize(objective, torch.zeros(8, 2 * 28 * 28), pgtol=1e-5)
    """
    settings = _check_arguments(
        x0, max_iterations, pgtol, factr, history, max_linesearch, max_evaluations, batched
    )
    n, d = x0.shape
    if n == 0:
        return _empty_result(x0)
    start = x0.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if max_iterations == 0:
        return _no_iterations(objective, x0, start, pgtol, batched)
    # SciPy's BLAS threads spin between the small L-BFGS-B calls and steal the cores the
    # model's forward/backward needs; torch's own threads are left alone (BLAS API only).
    with threadpool_limits(limits=1, user_api="blas"):
        if batched:
            outcomes = _solve_batched(objective, x0, start, settings, should_stop)
        else:
            outcomes = _solve_loop(objective, x0, start, settings, should_stop)
    return _collect(outcomes, x0)


def _check_arguments(
    x0: torch.Tensor,
    max_iterations: int,
    pgtol: float,
    factr: float,
    history: int,
    max_linesearch: int,
    max_evaluations: int | None,
    batched: bool,
) -> _Settings:
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or not x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating (N, D) tensor, got {shape}")
    if x0.shape[1] < 1:
        raise ValueError(f"x0 must have D >= 1 columns, got shape {tuple(x0.shape)}")
    _check_int("max_iterations", max_iterations, 0)
    _check_int("history", history, 1)
    _check_int("max_linesearch", max_linesearch, 1)
    if max_evaluations is not None:
        _check_int("max_evaluations", max_evaluations, 1)
    for name, value in (("pgtol", pgtol), ("factr", factr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(batched, bool):
        raise ValueError(f"batched must be True or False, got {batched!r}")
    return _Settings(
        max_iterations, float(pgtol), float(factr), history, max_linesearch, max_evaluations
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


# ---------------------------------------------------------------- objective calls


def _evaluate_rows(
    objective: Objective, rows: np.ndarray, idx: list[int], like: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """One objective call on float64 ``rows`` (M, D); (f (M,), g (M, D)) as float64 numpy."""
    # A private float64 copy: SciPy may hand over its own (possibly read-only) work array.
    x = torch.from_numpy(np.array(rows, dtype=np.float64)).to(device=like.device, dtype=like.dtype)
    i = torch.tensor(idx, dtype=torch.int64, device=like.device)
    f, g = objective(x, i)
    m, d = rows.shape
    if tuple(f.shape) != (m,) or tuple(g.shape) != (m, d):
        raise ValueError(
            f"objective must return f ({m},) and g ({m}, {d}), "
            f"got {tuple(f.shape)} and {tuple(g.shape)}"
        )
    f64 = f.detach().to(device="cpu", dtype=torch.float64).numpy()
    g64 = g.detach().to(device="cpu", dtype=torch.float64).numpy()
    return f64, g64


def _ask_rows(should_stop: StopFn, idx: list[int], like: torch.Tensor) -> np.ndarray:
    """One ``should_stop`` call; (M,) numpy bool."""
    answer = should_stop(torch.tensor(idx, dtype=torch.int64, device=like.device))
    if tuple(answer.shape) != (len(idx),):
        raise ValueError(
            f"should_stop must return ({len(idx)},) bools, got shape {tuple(answer.shape)}"
        )
    return answer.detach().to(device="cpu", dtype=torch.bool).numpy()


# ---------------------------------------------------------------- one problem


def _solve_one(
    x0: np.ndarray, evaluate: _Evaluate, ask_stop: _AskStop | None, settings: _Settings
) -> _Outcome:
    stopped = False

    # SciPy (>= 1.11) passes ``intermediate_result`` only to a callback with exactly this
    # parameter name, and ends the run cleanly when the callback raises StopIteration.
    def callback(intermediate_result: Any) -> None:
        nonlocal stopped
        if ask_stop is not None and ask_stop():
            stopped = True
            raise StopIteration

    result = scipy.optimize.minimize(
        evaluate,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=None if ask_stop is None else callback,
        options=settings.scipy_options(),
    )
    return _Outcome(result, stopped)


def _solve_loop(
    objective: Objective,
    like: torch.Tensor,
    start: np.ndarray,
    settings: _Settings,
    should_stop: StopFn | None,
) -> list[_Outcome]:
    outcomes = []
    for i in range(start.shape[0]):
        ask = None if should_stop is None else _single_stop_query(should_stop, i, like)
        outcomes.append(_solve_one(start[i], _single_evaluation(objective, i, like), ask, settings))
    return outcomes


def _single_evaluation(objective: Objective, i: int, like: torch.Tensor) -> _Evaluate:
    def evaluate(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = _evaluate_rows(objective, x.reshape(1, -1), [i], like)
        return float(f[0]), g[0].copy()

    return evaluate


def _single_stop_query(should_stop: StopFn, i: int, like: torch.Tensor) -> _AskStop:
    def ask_stop() -> bool:
        return bool(_ask_rows(should_stop, [i], like)[0])

    return ask_stop


# ---------------------------------------------------------------- batched: threads


class _Aborted(Exception):
    """Raised in a worker's ``fun`` when the solve is torn down (an error elsewhere)."""


@dataclass(eq=False)
class _Request:
    x: np.ndarray | None  # a row to evaluate, or None for a stop query
    ready: threading.Event = field(default_factory=threading.Event)
    answered: bool = False
    reply: Any = None


class _Coordinator:
    """Collects one request per running worker, answers them all with one call each.

    Workers block on their request's Event; the coordinator waits on a Condition until
    ``len(pending) == running``. A worker that finishes or fails decrements ``running``; a
    failure (or the coordinator's own error) aborts: every outstanding request is released
    unanswered and its worker raises :class:`_Aborted` out of SciPy.
    """

    def __init__(self, workers: int) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running = workers
        self._pending: dict[int, _Request] = {}
        self._outstanding: dict[int, _Request] = {}
        self._aborted = False
        self._error: BaseException | None = None

    # -- worker side
    def _post(self, i: int, request: _Request) -> Any:
        with self._lock:
            if self._aborted:
                raise _Aborted
            self._pending[i] = request
            self._outstanding[i] = request
            self._wake.notify()
        request.ready.wait()
        if not request.answered:
            raise _Aborted
        return request.reply

    def evaluate(self, i: int, x: np.ndarray) -> tuple[float, np.ndarray]:
        reply: tuple[float, np.ndarray] = self._post(i, _Request(np.array(x, dtype=np.float64)))
        return reply

    def ask_stop(self, i: int) -> bool:
        return bool(self._post(i, _Request(None)))

    def finish(self) -> None:
        with self._lock:
            self._running -= 1
            self._wake.notify()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
        self.abort()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            for request in self._outstanding.values():
                request.ready.set()
            self._outstanding.clear()
            self._pending.clear()
            self._wake.notify()

    # -- coordinator side (the calling thread)
    def serve(self, objective: Objective, should_stop: StopFn | None, like: torch.Tensor) -> None:
        while True:
            with self._lock:
                while not self._aborted and len(self._pending) < self._running:
                    self._wake.wait()
                if self._error is not None:
                    raise self._error
                if self._aborted or self._running == 0:
                    return
                batch = sorted(self._pending.items())
                self._pending = {}
            replies = self._answer(batch, objective, should_stop, like)
            with self._lock:
                if self._aborted:
                    continue
                for i, request in batch:
                    request.reply = replies[i]
                    request.answered = True
                    del self._outstanding[i]
                    request.ready.set()

    @staticmethod
    def _answer(
        batch: list[tuple[int, _Request]],
        objective: Objective,
        should_stop: StopFn | None,
        like: torch.Tensor,
    ) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        # Stop queries first: the problem's accepted iterate was in the previous objective call,
        # which is what a caller that records its evaluations (e.g. "adversarial yet?") expects.
        asks = [i for i, r in batch if r.x is None]
        if asks:
            assert should_stop is not None
            for i, stop in zip(asks, _ask_rows(should_stop, asks, like), strict=True):
                replies[i] = bool(stop)
        evals = [(i, r.x) for i, r in batch if r.x is not None]
        if evals:
            rows = np.stack([x for _, x in evals])
            f, g = _evaluate_rows(objective, rows, [i for i, _ in evals], like)
            for k, (i, _) in enumerate(evals):
                replies[i] = (float(f[k]), g[k].copy())
        return replies


def _solve_batched(
    objective: Objective,
    like: torch.Tensor,
    start: np.ndarray,
    settings: _Settings,
    should_stop: StopFn | None,
) -> list[_Outcome]:
    n = start.shape[0]
    coordinator = _Coordinator(n)
    outcomes: list[_Outcome | None] = [None] * n

    def work(i: int) -> None:
        try:
            ask = None if should_stop is None else (lambda: coordinator.ask_stop(i))
            outcomes[i] = _solve_one(start[i], lambda x: coordinator.evaluate(i, x), ask, settings)
        except _Aborted:
            pass  # torn down because of an error that serve() re-raises in the calling thread
        except BaseException as error:  # re-raised in the calling thread by serve()
            coordinator.fail(error)
        finally:
            coordinator.finish()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"stadv-lbfgsb-{i}", daemon=True)
        for i in range(n)
    ]
    try:
        for thread in threads:
            thread.start()
        coordinator.serve(objective, should_stop, like)
    finally:
        coordinator.abort()  # releases workers still waiting (only after an error)
        for thread in threads:
            if thread.ident is not None:
                thread.join()
    done = [o for o in outcomes if o is not None]
    if len(done) != n:  # unreachable unless a worker vanished without an error
        raise RuntimeError(f"{n - len(done)} of {n} SciPy L-BFGS-B runs did not finish")
    return done


# ---------------------------------------------------------------- results


def stop_reason(result: Any, stopped_by_callback: bool = False) -> str:
    """Map a SciPy L-BFGS-B ``OptimizeResult`` to one of :data:`STOP_REASONS`.

    ``"callback"`` when our ``should_stop`` halted it; ``"not_finite"`` when f or g at the
    returned x is not finite (SciPy may report NaN as convergence); otherwise from the message.
    """
    if stopped_by_callback:
        return "callback"
    jac = getattr(result, "jac", None)
    if not np.isfinite(result.fun) or (jac is not None and not np.all(np.isfinite(jac))):
        return "not_finite"
    message = str(result.message).upper()
    for needles, reason in _MESSAGE_REASONS:
        if any(needle in message for needle in needles):
            return reason
    raise RuntimeError(f"unrecognised SciPy L-BFGS-B stop (status {result.status}): {message!r}")


def _collect(outcomes: list[_Outcome], like: torch.Tensor) -> SolverResult:
    x = np.stack([o.result.x for o in outcomes])
    f = np.array([float(o.result.fun) for o in outcomes], dtype=np.float64)
    return SolverResult(
        x=torch.from_numpy(x).to(device=like.device, dtype=like.dtype),
        f=torch.from_numpy(f).to(device=like.device, dtype=like.dtype),
        iterations=torch.tensor(
            [int(o.result.nit) for o in outcomes], dtype=torch.int64, device=like.device
        ),
        evaluations=torch.tensor(
            [int(o.result.nfev) for o in outcomes], dtype=torch.int64, device=like.device
        ),
        stop_reason=tuple(stop_reason(o.result, o.stopped_by_callback) for o in outcomes),
    )


def _empty_result(like: torch.Tensor) -> SolverResult:
    empty = torch.zeros(0, dtype=torch.int64, device=like.device)
    return SolverResult(
        x=like.detach().clone(),
        f=torch.zeros(0, dtype=like.dtype, device=like.device),
        iterations=empty,
        evaluations=empty.clone(),
        stop_reason=(),
    )


def _no_iterations(
    objective: Objective, like: torch.Tensor, start: np.ndarray, pgtol: float, batched: bool
) -> SolverResult:
    """``max_iterations=0``: x0, with SciPy's start-point tests (pgtol, finiteness)."""
    n = start.shape[0]
    if batched:
        f, g = _evaluate_rows(objective, start, list(range(n)), like)
    else:
        parts = [_evaluate_rows(objective, start[i : i + 1], [i], like) for i in range(n)]
        f = np.concatenate([p[0] for p in parts])
        g = np.concatenate([p[1] for p in parts])
    reasons = []
    for k in range(n):
        if not (np.isfinite(f[k]) and np.all(np.isfinite(g[k]))):
            reasons.append("not_finite")
        elif np.max(np.abs(g[k])) <= pgtol:
            reasons.append("pgtol")
        else:
            reasons.append("max_iterations")
    return SolverResult(
        x=like.detach().clone(),
        f=torch.from_numpy(f).to(device=like.device, dtype=like.dtype),
        iterations=torch.zeros(n, dtype=torch.int64, device=like.device),
        evaluations=torch.ones(n, dtype=torch.int64, device=like.device),
        stop_reason=tuple(reasons),
    )
