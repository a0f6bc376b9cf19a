"""SciPy L-BFGS-B (batched threads vs loop vs direct SciPy) and batched Adam."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from stadv.solvers.adam import adam_minimize
from stadv.solvers.base import STOP_REASONS
from stadv.solvers.scipy_lbfgsb import scipy_lbfgsb_minimize, stop_reason


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """Row-wise Rosenbrock, (M, D) -> (M,)."""
    return (100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1.0 - x[:, :-1]) ** 2).sum(dim=1)


class Counted:
    """Row-wise Rosenbrock objective that records every call's idx."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(idx.tolist())
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise ArithmeticError("objective failed on purpose")
        x = x.detach().requires_grad_(True)
        f = rosenbrock(x)
        (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g


def scipy_fg(x: np.ndarray) -> tuple[float, np.ndarray]:
    return float(scipy.optimize.rosen(x)), scipy.optimize.rosen_der(x)


def direct_scipy(x0: torch.Tensor, **options: object) -> scipy.optimize.OptimizeResult:
    """SciPy's L-BFGS-B on Rosenbrock, BLAS pinned to one thread (else ~100x slower here)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return scipy.optimize.minimize(
            scipy_fg, x0.numpy(), jac=True, method="L-BFGS-B", options=options
        )


START = torch.tensor(
    [[-1.2, 1.0, 0.5], [1.0, 1.0, 1.0], [2.0, -1.5, 0.3], [-3.0, -4.0, 2.0], [0.9, 0.8, 0.7]],
    dtype=torch.float64,
)


@pytest.fixture(scope="module")
def both() -> tuple[object, object, Counted, Counted]:
    loop_obj, batch_obj = Counted(), Counted()
    loop = scipy_lbfgsb_minimize(loop_obj, START, batched=False)
    batch = scipy_lbfgsb_minimize(batch_obj, START, batched=True)
    return loop, batch, loop_obj, batch_obj


def test_batched_equals_loop(both: tuple) -> None:
    loop, batch, _, _ = both
    assert torch.equal(loop.x, batch.x)
    assert torch.equal(loop.f, batch.f)
    assert torch.equal(loop.iterations, batch.iterations)
    assert torch.equal(loop.evaluations, batch.evaluations)
    assert loop.stop_reason == batch.stop_reason
    assert batch.x.dtype == START.dtype and batch.iterations.dtype == torch.int64
    # Problems finish at very different times: [1, 1, 1] is the minimum (pgtol at the start).
    assert batch.iterations[1] == 0 and batch.stop_reason[1] == "pgtol"
    assert int(batch.iterations.max()) > 20


def test_equals_direct_scipy(both: tuple) -> None:
    _, batch, _, _ = both
    for i in range(START.shape[0]):
        ref = direct_scipy(
            START[i], maxiter=1000, gtol=1e-5, ftol=1e7 * np.finfo(float).eps, maxcor=10, maxls=20
        )
        np.testing.assert_allclose(batch.x[i].numpy(), ref.x, rtol=0, atol=1e-12)
        assert batch.iterations[i] == ref.nit
        assert batch.evaluations[i] == ref.nfev
        assert batch.stop_reason[i] == stop_reason(ref)
        assert batch.stop_reason[i] in STOP_REASONS
    np.testing.assert_allclose(batch.x.numpy()[[0, 2, 4]], 1.0, atol=1e-3)


def test_coordinator_batches_rows(both: tuple) -> None:
    loop, batch, loop_obj, batch_obj = both
    assert all(len(c) == 1 for c in loop_obj.calls)
    assert len(loop_obj.calls) == int(loop.evaluations.sum())
    # Every round serves every still-running problem, so there are as many calls as the
    # longest run has evaluations, each row exactly once per call.
    assert len(batch_obj.calls) == int(batch.evaluations.max())
    assert len(batch_obj.calls) < len(loop_obj.calls) / 2
    assert batch_obj.calls[0] == list(range(START.shape[0]))
    assert all(c == sorted(set(c)) for c in batch_obj.calls)
    per_problem = np.bincount(np.concatenate(batch_obj.calls), minlength=START.shape[0])
    assert per_problem.tolist() == batch.evaluations.tolist()


def test_float32_and_per_problem_objectives() -> None:
    # Problem i minimises scale_i * |x - c_i|^2: different optima, dtype float32 in and out.
    centres = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0], [10.0, -10.0]])
    scales = torch.tensor([1.0, 100.0, 0.01, 3.0])

    def objective(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.float32 and idx.dtype == torch.int64
        diff = x - centres[idx]
        return scales[idx] * diff.square().sum(1), 2 * scales[idx, None] * diff

    res = scipy_lbfgsb_minimize(objective, torch.zeros(4, 2), pgtol=1e-7)
    assert res.x.dtype == torch.float32 and res.f.dtype == torch.float32
    torch.testing.assert_close(res.x, centres, atol=1e-4, rtol=0)
    assert set(res.stop_reason) <= {"pgtol", "factr"}


def test_objective_error_propagates_without_leaking_threads() -> None:
    baseline = threading.active_count()
    objective = Counted(fail_on_call=4)
    with pytest.raises(ArithmeticError, match="on purpose"):
        scipy_lbfgsb_minimize(objective, START, batched=True)
    assert len(objective.calls) == 4
    assert threading.active_count() == baseline


def test_worker_error_propagates_without_leaking_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    real_minimize = scipy.optimize.minimize

    def flaky_minimize(fun, x0, **kwargs):  # type: ignore[no-untyped-def]
        if x0[0] == 2.0:  # problem 2 fails inside its SciPy thread after a few evaluations
            for _ in range(3):
                fun(x0)
            raise FloatingPointError("worker failed on purpose")
        return real_minimize(fun, x0, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", flaky_minimize)
    baseline = threading.active_count()
    with pytest.raises(FloatingPointError, match="on purpose"):
        scipy_lbfgsb_minimize(Counted(), START, batched=True)
    assert threading.active_count() == baseline


def test_bad_objective_shape_raises() -> None:
    def objective(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(1, keepdim=True), x

    baseline = threading.active_count()
    with pytest.raises(ValueError, match="objective must return f"):
        scipy_lbfgsb_minimize(objective, START)
    assert threading.active_count() == baseline


def test_stop_reason_pgtol_iterations_evaluations_factr() -> None:
    x0 = START[[0, 2]]
    res = scipy_lbfgsb_minimize(Counted(), x0, max_iterations=3)
    assert res.stop_reason == ("max_iterations", "max_iterations")
    assert res.iterations.tolist() == [3, 3]

    res = scipy_lbfgsb_minimize(Counted(), x0, max_evaluations=5)
    assert res.stop_reason == ("max_evaluations", "max_evaluations")
    assert all(e > 5 for e in res.evaluations.tolist())  # SciPy checks after the iteration

    res = scipy_lbfgsb_minimize(Counted(), x0, factr=1e13, pgtol=0.0)
    assert res.stop_reason == ("factr", "factr")

    res = scipy_lbfgsb_minimize(Counted(), torch.ones(2, 4, dtype=torch.float64))
    assert res.stop_reason == ("pgtol", "pgtol")
    assert res.iterations.tolist() == [0, 0] and res.evaluations.tolist() == [1, 1]


def test_stop_reason_line_search_and_not_finite() -> None:
    def wrong_gradient(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.square().sum(1), -2 * x  # g points uphill: no step decreases f

    res = scipy_lbfgsb_minimize(wrong_gradient, START[:2], batched=True)
    assert res.stop_reason == ("line_search", "line_search")
    assert torch.equal(res.x, START[:2])

    def nan_away_from_start(x: torch.Tensor, idx: torch.Tensor):  # type: ignore[no-untyped-def]
        f, g = Counted()(x, idx)
        return torch.where(x[:, 0] > -1.1, torch.nan, f), g

    res = scipy_lbfgsb_minimize(nan_away_from_start, START[:1])
    assert res.stop_reason == ("not_finite",)


def test_should_stop_callback_batched_and_loop() -> None:
    asked: list[list[int]] = []

    def should_stop(idx: torch.Tensor) -> torch.Tensor:
        asked.append(idx.tolist())
        return idx % 2 == 0  # even problems stop after their first iteration

    results = []
    for batched in (True, False):
        asked.clear()
        res = scipy_lbfgsb_minimize(Counted(), START, should_stop=should_stop, batched=batched)
        results.append(res)
        assert res.stop_reason[0] == res.stop_reason[2] == res.stop_reason[4] == "callback"
        assert res.iterations[[0, 2, 4]].tolist() == [1, 1, 1]
        assert res.stop_reason[3] != "callback" and res.iterations[3] > 1
        assert res.stop_reason[1] == "pgtol"  # converged at x0, never asked
        assert all(1 not in a for a in asked)
    batch, loop = results
    assert torch.equal(batch.x, loop.x) and torch.equal(batch.iterations, loop.iterations)
    ref = direct_scipy(START[0], maxiter=1)
    np.testing.assert_allclose(batch.x[0].numpy(), ref.x, rtol=0, atol=1e-12)


def test_max_iterations_zero_returns_start() -> None:
    objective = Counted()
    res = scipy_lbfgsb_minimize(objective, START, max_iterations=0)
    assert torch.equal(res.x, START)
    torch.testing.assert_close(res.f, rosenbrock(START))
    assert res.stop_reason[1] == "pgtol" and res.stop_reason[0] == "max_iterations"
    assert res.iterations.tolist() == [0] * 5 and len(objective.calls) == 1


def test_empty_batch() -> None:
    res = scipy_lbfgsb_minimize(Counted(), torch.zeros(0, 3, dtype=torch.float64))
    assert res.x.shape == (0, 3) and res.stop_reason == ()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_iterations": -1}, "max_iterations"),
        ({"max_iterations": 2.5}, "max_iterations"),
        ({"pgtol": -1e-3}, "pgtol"),
        ({"pgtol": float("nan")}, "pgtol"),
        ({"factr": -1.0}, "factr"),
        ({"history": 0}, "history"),
        ({"max_linesearch": 0}, "max_linesearch"),
        ({"max_evaluations": 0}, "max_evaluations"),
        ({"batched": "yes"}, "batched"),
    ],
)
def test_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        scipy_lbfgsb_minimize(Counted(), START, **kwargs)


def test_invalid_x0() -> None:
    with pytest.raises(ValueError, match="x0"):
        scipy_lbfgsb_minimize(Counted(), START[0])


def test_threads_overlap_the_objective_with_scipy() -> None:
    # Sanity of the point of batching: a slow objective costs one call per round, not per row.
    def slow(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.002)
        return Counted()(x, idx)

    x0 = START.repeat(4, 1)
    tic = time.perf_counter()
    batch = scipy_lbfgsb_minimize(slow, x0, max_iterations=15)
    t_batch = time.perf_counter() - tic
    tic = time.perf_counter()
    loop = scipy_lbfgsb_minimize(slow, x0, max_iterations=15, batched=False)
    t_loop = time.perf_counter() - tic
    assert torch.equal(batch.x, loop.x)
    assert t_batch < t_loop / 2


def test_rows_and_results_stay_on_the_device(device: torch.device) -> None:
    devices: set[str] = set()

    def objective(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        devices.update({x.device.type, idx.device.type})
        return Counted()(x, idx)

    cpu = scipy_lbfgsb_minimize(Counted(), START)
    res = scipy_lbfgsb_minimize(objective, START.to(device))
    assert devices == {device.type}
    assert res.x.device.type == res.f.device.type == res.iterations.device.type == device.type
    torch.testing.assert_close(res.x.cpu(), cpu.x, rtol=0, atol=1e-8)
    assert res.stop_reason == cpu.stop_reason


# ---------------------------------------------------------------- Adam


def quadratic(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = idx.to(x.dtype)[:, None]
    return (x - centre).square().sum(1), 2 * (x - centre)


def test_adam_decreases_quadratic_and_matches_torch_adam() -> None:
    x0 = torch.tensor([[3.0, -2.0], [0.5, 4.0], [-1.0, -1.0]], dtype=torch.float64)
    res = adam_minimize(quadratic, x0, steps=300, lr=0.05)
    f0, _ = quadratic(x0, torch.arange(3))
    assert torch.all(res.f < 0.05 * f0)
    assert res.stop_reason == ("max_iterations",) * 3
    assert res.iterations.tolist() == [300] * 3 and res.evaluations.tolist() == [301] * 3
    torch.testing.assert_close(res.f, quadratic(res.x, torch.arange(3))[0])
    for i in range(3):  # the per-row update is torch.optim.Adam's, row by row
        p = x0[i : i + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            p.grad = quadratic(p.detach(), torch.tensor([i]))[1]
            opt.step()
        torch.testing.assert_close(res.x[i], p.detach()[0], rtol=1e-10, atol=1e-10)


def test_adam_should_stop_drops_rows() -> None:
    calls: list[list[int]] = []

    def objective(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(idx.tolist())
        return quadratic(x, idx)

    def should_stop(idx: torch.Tensor) -> torch.Tensor:
        return torch.full_like(idx, len(calls) >= 6, dtype=torch.bool) & (idx == 1)

    x0 = torch.full((3, 2), 5.0)
    res = adam_minimize(objective, x0, steps=10, lr=0.1, should_stop=should_stop)
    assert res.stop_reason == ("max_iterations", "callback", "max_iterations")
    assert res.iterations.tolist() == [10, 5, 10]
    assert res.evaluations.tolist() == [11, 6, 11]
    assert all(1 not in c for c in calls[6:]) and len(calls) == 11
    assert torch.equal(x0, torch.full((3, 2), 5.0))  # not mutated
    torch.testing.assert_close(res.f, quadratic(res.x, torch.arange(3))[0])


def test_adam_not_finite_and_zero_steps() -> None:
    def objective(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, g = quadratic(x, idx)
        return torch.where(idx == 0, torch.inf, f), g

    res = adam_minimize(objective, torch.ones(2, 2), steps=5)
    assert res.stop_reason == ("not_finite", "max_iterations")
    assert res.iterations.tolist() == [0, 5]
    res = adam_minimize(quadratic, torch.ones(2, 2), steps=0)
    assert torch.equal(res.x, torch.ones(2, 2)) and res.evaluations.tolist() == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": -1e-8}, "eps"),
    ],
)
def test_adam_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        adam_minimize(quadratic, torch.ones(2, 2), **kwargs)
