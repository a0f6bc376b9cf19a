"""Ray and Tune for the sweeps: the cluster, the trials' resources and the Tune run (one
trial per point, FIFO, failed trials retried).

Workers import the sweep machinery by name (:mod:`stadv_sweeps` is installed with the
project, in the image and in the virtual environment), so ``ray job submit --working-dir .
-- python sweeps/kappa_tau.py`` works as it does locally. An embedded Ray listens on the
loopback interface only; an ``--address`` that does not answer is an error within
:data:`~stadv_sweeps.engine.cli.CONNECT_TIMEOUT_S` seconds, not an endless retry.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from stadv_sweeps.engine.cli import CONNECT_TIMEOUT_S, check_gpus_per_trial
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.engine.trial import run_trial

#: Ray resolves the loopback address to the host's own unless its single-machine mode is on
#: (the setting Ray itself uses on macOS and Windows): then every server of an embedded Ray
#: (GCS, raylet, workers, agents) binds to 127.0.0.1.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _single_machine() -> Iterator[None]:
    from ray._private import ray_constants  # the flag is read from here at ray.init

    saved_env = os.environ.get(_SINGLE_MACHINE_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """``SweepError`` naming ``address`` when nothing accepts a connection there in
    ``timeout`` seconds (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is Ray's to find)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://").removeprefix("http://").removeprefix("https://")
    host, sep, port = target.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"--address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise SweepError(
            f"Ray address {address} does not answer ({err.strerror or err}; waited at most "
            f"{timeout:g} s): start the cluster or check the address"
        ) from None


def init_ray(address: str | None) -> bool:
    """Join ``address`` or start an embedded Ray sized to this machine, on 127.0.0.1 only;
    True if started here."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address:
        check_address(address)
        ray.init(address=address, **kwargs)
        return True
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with _single_machine():
        ray.init(address="local", num_cpus=cpus or 1, _node_ip_address="127.0.0.1", **kwargs)
    return True


def point_id(point: Point) -> str:
    """How a trial's config names its point: ``<model>-<key>``."""
    return f"{point.model}-{point.key}"


def trial_name(trial: Any) -> str:
    return str(trial.config["point"])[:-6]  # <model>-<first 10 hex digits of the key>


class Progress(tune.Callback):
    """Prints one line per finished, retried or failed trial (Tune calls it in the driver)."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)
        self.total = len(labels)
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()

    def _line(self, trial: Any, what: str, extra: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        count = f"{self.done + self.failed:>3}/{self.total}"
        label = self.labels.get(str(trial.config["point"]), str(trial.config["point"]))
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
    """(CPUs, GPUs) per trial from the command line (checked before Ray started:
    :func:`~stadv_sweeps.engine.cli.check_run_arguments`); ``SweepError`` when no trial fits
    the cluster."""
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if args.cpus_per_trial <= 0 and gpus <= 0:
        raise SweepError("a trial needs some resource: this cluster has no GPU for it")
    if slots(args.cpus_per_trial, gpus) < 1:
        have = ray.cluster_resources()
        raise SweepError(
            f"no trial fits the cluster: asked {args.cpus_per_trial} CPU and {gpus} GPU per trial, "
            f"the cluster has {have.get('CPU', 0)} CPU and {have.get('GPU', 0)} GPU"
        )
    return float(args.cpus_per_trial), float(gpus)


def trial_resources(cpus: float, gpus: float) -> dict[str, float]:
    """What Tune reserves for one trial (``tune.with_resources``): ``cpus`` CPUs and ``gpus``
    GPUs, a fraction of one shared with other trials (0.25: four trials per GPU) or a whole
    number (checked: :func:`~stadv_sweeps.engine.cli.check_gpus_per_trial`). Ray sets each
    trial's ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned, where the trial attacks
    (:func:`~stadv_sweeps.engine.trial.trial_device`); with no GPU share a trial sees none
    and runs on its CPUs."""
    return {"cpu": float(cpus), "gpu": check_gpus_per_trial(gpus, local=False)}


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
    """One Tune trial per point (its config names the point, :func:`point_id`; the points
    themselves, attack objects included, travel in ``data["points"]`` through Ray's object
    store with the models and images)."""
    cpus, gpus = per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data), trial_resources(cpus, gpus)
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "point": tune.grid_search([point_id(p) for p in points]),
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
            callbacks=[Progress({point_id(p): p.label for p in points})],
            verbose=0,
        ),
    )
    return tuner.fit()
