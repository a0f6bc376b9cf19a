"""The stAdv option-grid sweeps (``kappa_tau.py``, ``ablation.py``): their plan for the driver.

A script declares its grids as :class:`SweepDefaults` and calls :func:`main`::

    DEFAULTS = SweepDefaults(sweep="kappa_tau", description=__doc__, default=SweepSpec(...),
                             smoke=SweepSpec(...))
    sys.exit(main(DEFAULTS))

Trials attack the undefended models A, B, C with :class:`~stadv.attack.StAdv`; the summary
is :mod:`results`' (trials, best settings, the paper's Table 1 beside ours, choices ranked by
their effect), and ``sweeps/results.py`` writes the Markdown report.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import results
import runner
from cli import add_grid_arguments, resolve_spec
from mlflow import MlflowClient
from prepare import prepare_models
from spec import Point, SweepDefaults, SweepSpec, base_options, build_points

__all__ = ["GridSweep", "SweepDefaults", "SweepSpec", "main"]


class GridSweep:
    """:class:`runner.SweepPlan` of a grid sweep declared by :class:`SweepDefaults`."""

    report_script = "results"

    def __init__(self, defaults: SweepDefaults) -> None:
        self.defaults = defaults
        self.sweep = defaults.sweep
        self.description = defaults.description

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_grid_arguments(parser)

    def resolve(self, args: argparse.Namespace) -> SweepSpec:
        return resolve_spec(args, self.defaults)

    def from_json(self, raw: Mapping[str, Any]) -> SweepSpec:
        return SweepSpec.from_json(raw)

    def points(self, spec: SweepSpec) -> list[Point]:
        return build_points(spec)

    def parent_params(self, spec: SweepSpec) -> dict[str, Any]:
        params: dict[str, Any] = {
            "sweep": spec.sweep,
            "models": " ".join(spec.models),
            "dataset": spec.dataset,
            "n_images": spec.n_images,
            "targets": spec.targets,
            "smoke_test": spec.smoke,
        }
        params.update({f"base.{k}": v for k, v in base_options(spec).items()})
        return params

    def prepare_models(self, spec: SweepSpec, args: argparse.Namespace) -> dict[str, Any]:
        return prepare_models(spec.models, spec.dataset, spec.smoke, args.store, args.data_dir)

    def summary(self, parent: Any, df: Any) -> tuple[str, dict[str, float]]:
        text = results.summary_text(df, results.base_options(parent))
        succ = results.success_column(df)
        best = {f"best_success_{m}": float(g[succ].max()) for m, g in df.groupby("model")}
        return text, best

    def log_summary(self, client: MlflowClient, parent: Any, df: Any) -> None:
        results.log_summary(client, parent, df)


def main(defaults: SweepDefaults, argv: Sequence[str] | None = None) -> int:
    """Run a grid sweep script (exit status as :func:`runner.main`)."""
    return runner.main(GridSweep(defaults), argv)
