"""Ray and Tune for the sweeps: the cluster, the workers' code, the trials' resources and
the Tune run (one trial per point, FIFO, failed trials retried).

The sweep modules are imported by the scripts as siblings (``import runner``); Ray pickles
them by value (:func:`register_by_value`), so workers need no copy of ``sweeps/`` on their
path and never get one (:func:`init_ray`): ``ray job submit --working-dir . -- python
sweeps/kappa_tau.py`` works as it does locally.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune
from spec import Point, SweepError
from trial import run_trial

SWEEPS = Path(__file__).resolve().parent


@contextmanager
def _folder_off_path(folder: Path) -> Iterator[None]:
    """``folder`` out of ``sys.path`` for the duration (Ray copies the script's folder onto its
    workers' path only when it is on the driver's at ``ray.init``)."""
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != folder]
    try:
        yield
    finally:
        sys.path[:] = saved


def init_ray(address: str | None) -> bool:
    """Join ``address`` or start an embedded Ray sized to this machine; True if started here.

    Workers get the sweep modules by value and must not get ``sweeps/`` on their path: there
    ``defenses.py`` (a script) would stand in for the library package ``defenses``.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    with _folder_off_path(SWEEPS):
        if address:
            ray.init(address=address, **kwargs)
        else:
            cpus = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            )
            ray.init(address="local", num_cpus=cpus or 1, **kwargs)
    return True


def register_by_value() -> None:
    """Ship every sweep module (those loaded from ``sweeps/``) to the workers by value."""
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if name != "__main__" and where and Path(where).resolve().parent == SWEEPS:
            ray.cloudpickle.register_pickle_by_value(module)


def trial_name(trial: Any) -> str:
    point = trial.config["point"]
    return f"{point['model']}-{point['key'][:10]}"


class Progress(tune.Callback):
    """Prints one line per finished, retried or failed trial (Tune calls it in the driver)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()

    def _line(self, trial: Any, what: str, extra: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        count = f"{self.done + self.failed:>3}/{self.total}"
        label = trial.config["point"]["label"]
        print(f"[{count} {elapsed:6.0f} s] {what:<6} {label}{extra}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        m = trial.last_result or {}
        rate = m.get("targeted_success_rate", m.get("untargeted_success_rate", math.nan))
        flow = m.get("mean_flow_loss", math.nan)
        size = f"L_flow {flow:8.3g}" if flow == flow else f"L2 {m.get('mean_l2', math.nan):12.3g}"
        extra = f"  success {rate:7.2%}  {size}  attack {m.get('seconds', math.nan):6.1f} s"
        if m.get("reused"):
            extra += "  (finished earlier: reused its run)"
        self._line(trial, "done", extra)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trial, "retry", "  (the trial failed; Ray runs it again)")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1
        self._line(trial, "FAILED", f"  (after {trial.num_failures} attempts)")


def slots(cpus: float, gpus: float) -> int:
    """How many trials of this size the cluster runs at once."""
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 0) // cpus) if cpus > 0 else 10**6
    if gpus > 0:
        slots = min(slots, int(res.get("GPU", 0) // gpus))
    return max(slots, 0)


def resources(args: argparse.Namespace) -> tuple[float, float]:
    """(CPUs, GPUs) per trial from the command line; ``SweepError`` when no trial fits."""
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if args.cpus_per_trial <= 0 and gpus <= 0:
        raise SweepError("a trial needs some resource: --cpus-per-trial or --gpus-per-trial > 0")
    if slots(args.cpus_per_trial, gpus) < 1:
        have = ray.cluster_resources()
        raise SweepError(
            f"no trial fits the cluster: asked {args.cpus_per_trial} CPU and {gpus} GPU per trial, "
            f"the cluster has {have.get('CPU', 0)} CPU and {have.get('GPU', 0)} GPU"
        )
    return float(args.cpus_per_trial), float(gpus)


def tune_storage(storage_path: str, experiment: str) -> str:
    """Where Tune keeps this experiment's state: ``<storage_path>/<experiment>``.

    A URI (anything with ``://``, e.g. ``s3://bucket/path``) goes to Tune as it is, with the
    experiment appended; a local path is made absolute (``Path`` would fold ``s3://`` into
    ``s3:/`` and resolve it against the working directory).
    """
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{experiment}"
    return str(Path(storage_path).resolve() / experiment)


def run_tune(
    points: Sequence[Point],
    ctx: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
    storage: str,
    per_trial: tuple[float, float],
) -> Any:
    cpus, gpus = per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data), {"cpu": cpus, "gpu": gpus}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "point": tune.grid_search([dataclasses.asdict(p) for p in points]),
            "ctx": ctx,
        },
        tune_config=tune.TuneConfig(
            scheduler=tune.schedulers.FIFOScheduler(),
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"),
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            callbacks=[Progress(len(points))],
            verbose=0,
        ),
    )
    return tuner.fit()
