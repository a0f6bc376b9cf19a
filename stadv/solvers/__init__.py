"""Batched solvers with per-problem state (see :mod:`stadv.solvers.base` for the contract).

* :func:`stadv.solvers.lbfgs.lbfgs_minimize` — torch-native L-BFGS, Moré–Thuente line search,
  SciPy's L-BFGS-B stopping rules; CPU or GPU.
* :func:`stadv.solvers.scipy_lbfgsb.scipy_lbfgsb_minimize` — SciPy's own L-BFGS-B per problem,
  evaluations batched across problems (or a plain loop, the slow baseline).
* :func:`stadv.solvers.adam.adam_minimize` — first-order comparison.
"""
