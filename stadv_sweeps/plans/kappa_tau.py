"""Sweep stAdv over kappa, tau, the flow initialisation and pgtol for Models A, B and C.

One Ray Tune trial per grid point; each logs a nested MLflow run with its metrics, figures and
per-attack table. The default grid covers the values the public reproduction tried and the
paper's setting (tau = 0.05, kappa = 0, zero flow, SciPy's pgtol = 1e-5):

* kappa x tau: kappa in {0, 0.5}, tau in {0.05, 5e-3, 5e-4, 1e-4, 0} (zero flow);
* Gaussian initial flow (std 0.01) at tau = 0.05 and 5e-4;
* pgtol 1e-7 and 1e-10 at the paper's setting;

14 trials per model, 42 in all, each attacking the first 30 test images towards all 9 other
classes (``--n-images`` and ``--preset paper`` scale that up). Its cost on a CPU is in
``docs/performance.md``.

    python sweeps/kappa_tau.py                        # embedded Ray, ./mlflow.db
    python sweeps/kappa_tau.py --address auto --tracking-uri http://mlflow:5000 --preset paper
    python sweeps/kappa_tau.py --smoke-test           # 4 tiny trials
"""

from __future__ import annotations

from collections.abc import Sequence

from stadv_sweeps.plans.grid import SweepDefaults, SweepSpec
from stadv_sweeps.plans.grid import main as grid_main

DEFAULTS = SweepDefaults(
    sweep="kappa_tau",
    description=__doc__ or "",
    default=SweepSpec(
        sweep="kappa_tau",
        models=("A", "B", "C"),
        n_images=30,
        targets="all",
        grid=(
            {"kappa": [0.0, 0.5], "tau": [0.05, 5e-3, 5e-4, 1e-4, 0.0]},
            {"init": ["gaussian"], "tau": [0.05, 5e-4]},
            {"pgtol": [1e-7, 1e-10]},
        ),
    ),
    smoke=SweepSpec(
        sweep="kappa_tau",
        models=("B",),
        n_images=4,
        targets="all",
        fixed={"max_iterations": 20},
        grid=({"kappa": [0.0, 0.5], "tau": [0.05, 0.0]},),
        smoke=True,
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python sweeps/kappa_tau.py``: exit status as :func:`stadv_sweeps.engine.runner.main`."""
    return grid_main(DEFAULTS, argv)
