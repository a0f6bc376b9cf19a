"""One trial, in a Ray worker: attack a model, log a nested MLflow child run, report to Tune.

:func:`run_trial` is the Tune function. It first looks under the sweep's parent run for a
FINISHED child run with its trial key and, if there is one, reports it instead of running
again; unfinished leftovers of a killed attempt are deleted first. So Ray's retries and
``--resume`` never leave duplicates. Otherwise it rebuilds its model from the bundle in
Ray's object store (:mod:`bundles`), runs its attack over the images and logs parameters,
metrics, tags and artifacts (the Figure-2 grid, a flow quiver for stAdv, the
target-vs-prediction heat map and the per-attack table as Parquet and CSV), the evaluated
images as a dataset input, the attacked checkpoint as ``checkpoint.*`` tags, a one-line
Markdown description, and MLflow's system metrics (``system/*``, sampled every
:data:`SYSTEM_METRICS_INTERVAL_S` seconds while the attack runs). Metric names in MLflow are
:mod:`~stadv_sweeps.engine.views`'s; Tune gets the library's.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import tune

from stadv import plots
from stadv.metrics import attack_table, summarize
from stadv.models import predict
from stadv.options import to_params
from stadv.targets import as_target_spec
from stadv.views import save_views
from stadv_sweeps.engine import views
from stadv_sweeps.engine.bundles import to_module
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.engine.tags import PARENT_TAG, SWEEP_TAG, TRIAL_KEY_TAG
from stadv_sweeps.engine.tracking import (
    NOTE_TAG,
    as_metrics,
    as_params,
    as_tags,
    child_runs,
    dataset_input,
    explicit_options,
)

#: Seconds between two samples of a trial's system metrics (MLflow's default is 10 s, longer
#: than a smoke trial).
SYSTEM_METRICS_INTERVAL_S = 1.0
#: attacks shown in a trial's representation-space view (t-SNE's cost grows with the points)
VIEW_POINTS = 200


def run_trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One grid point: attack, log a nested MLflow child run, report metrics to Tune.

    ``config["point"]`` names the trial (``<model>-<key>``), ``config["ctx"]`` holds the
    sweep's shared settings; ``data`` holds object-store references to the points (their
    attack objects, validated in the driver), the model bundles and the images.
    """
    point: Point = ray.get(data["points"])[config["point"]]
    ctx = config["ctx"]
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    # one "View run at <url>" line per trial from every worker would bury the progress lines
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = MlflowClient(ctx["tracking_uri"])
    exp_id, parent = ctx["experiment_id"], ctx["parent_run_id"]

    previous = child_runs(client, exp_id, parent, point.key)
    done = [r for r in previous if r.info.status == "FINISHED"]
    if done:  # finished before an interruption or a retry: report it, do not run it again
        run = done[0]
        metrics = views.from_mlflow(run.data.metrics)
        tune.report({**metrics, "mlflow_run_id": run.info.run_id, "reused": 1})
        return
    for r in previous:  # a killed or failed attempt: its partial run must not linger
        client.delete_run(r.info.run_id)

    device = trial_device(ray.get_gpu_ids(), cuda_available=torch.cuda.is_available())
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    context = tune.get_context()
    tags = {
        PARENT_TAG: parent,
        TRIAL_KEY_TAG: point.key,
        SWEEP_TAG: ctx["sweep"],
        "mlflow.source.name": f"sweeps/{ctx.get('script', ctx['sweep'])}.py",
        "mlflow.source.git.commit": ctx["git_commit"],
        "git_commit": ctx["git_commit"],
        "model": point.model,
        "dataset": ctx["dataset"],
        "device": f"{device} ({device_name})",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "ray_trial_id": context.get_trial_id() if context else "",
        **{f"version.{k}": v for k, v in ctx["versions"].items()},
        **ctx.get("checkpoints", {}).get(point.weights or point.model, {}),
    }
    # tag values must be strings (the REST store rejects anything else)
    run = client.create_run(exp_id, run_name=point.label, tags={k: str(v) for k, v in tags.items()})
    run_id = run.info.run_id
    monitor = _system_metrics(run_id, ctx["tracking_uri"])
    try:
        metrics = _attack_and_log(client, run_id, point, ctx, data, device)
    except BaseException:
        _stop(monitor)
        client.set_terminated(run_id, "FAILED")
        raise
    _stop(monitor)
    client.set_terminated(run_id, "FINISHED")
    tune.report({**metrics, "mlflow_run_id": run_id, "reused": 0})


def trial_device(gpu_ids: list[Any], *, cuda_available: bool) -> torch.device:
    """Where a trial attacks: ``cuda`` (the first GPU Ray assigned it, which Ray made the
    process's only visible one through ``CUDA_VISIBLE_DEVICES``) when it holds a GPU share
    (``gpu_ids``, :func:`ray.get_gpu_ids`) and CUDA works here, else the CPU. A trial with a
    GPU share on a node without a working CUDA runtime is an error, not a silent CPU run
    that the sweep's resources would misreport."""
    if not gpu_ids:
        return torch.device("cpu")
    if not cuda_available:
        raise RuntimeError(
            f"Ray assigned this trial GPU {', '.join(map(str, gpu_ids))}, but torch sees no "
            "CUDA device here"
        )
    return torch.device("cuda")


def _system_metrics(run_id: str, uri: str) -> SystemMetricsMonitor | None:
    """MLflow's CPU, memory, disk, network (and GPU) sampler on this run, started; None if it
    cannot start here (the trial runs without)."""
    # its start/stop lines, once per trial from every worker, would bury the progress lines
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
            run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri
        )
        monitor.start()  # type: ignore[no-untyped-call]
    except Exception as err:  # a missing sensor must not fail the trial
        warnings.warn(f"system metrics not sampled: {err}", stacklevel=2)
        return None
    return monitor


def _stop(monitor: SystemMetricsMonitor | None) -> None:
    if monitor is not None:
        monitor.finish()  # type: ignore[no-untyped-call]


def _description(point: Point, metrics: dict[str, float], params: dict[str, Any]) -> str:
    """The child run's Markdown description: what ran and its headline result."""
    rate = metrics.get("targeted_success_rate", metrics.get("untargeted_success_rate"))
    which = "targeted" if "targeted_success_rate" in metrics else "untargeted"
    stem = f"{which}_success"
    low, high = metrics.get(f"{stem}_ci_low"), metrics.get(f"{stem}_ci_high")
    lines = [
        f"**{point.label}**: {point.attack_name} against model {point.model} "
        f"({params.get('dataset', '')}, {int(metrics.get('n_images', 0))} images, "
        f"targets {params.get('targets', '')}).",
        "",
    ]
    if rate is not None and low is not None and high is not None:
        lines.append(
            f"{which.capitalize()} success **{rate:.2%}** (95 % Wilson interval "
            f"{low:.2%} to {high:.2%}) over {int(metrics.get('attacks', 0))} attacks; "
            f"clean accuracy {metrics.get('clean_accuracy', float('nan')):.2%}."
        )
    return "\n".join(lines)


def _attack_and_log(
    client: Any,
    run_id: str,
    point: Point,
    ctx: dict[str, Any],
    data: dict[str, Any],
    device: Any,
) -> dict[str, float]:
    start = time.perf_counter()
    model_name = point.model
    held = ray.get(data["models"][point.weights or model_name])
    images, labels = ray.get(data["images"])
    model = to_module(held).to(device).eval()
    images, labels = images.to(device), labels.to(device)
    clean_accuracy = float((predict(model, images) == labels).float().mean())

    attack_name = point.attack_name
    attack = point.attack
    # a point may fix its own protocol (an untargeted-only attack in a targeted sweep)
    targets = as_target_spec(point.params.get("targets", ctx["targets"]))
    report = held.get("report")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attack(model, images, labels, targets=targets)
        further = (
            {} if report is None else report(attack_name, attack, images, labels, targets, result)
        )
    metrics: dict[str, float] = {**summarize(result), **further}
    metrics["clean_accuracy"] = clean_accuracy
    metrics["n_images"] = float(images.shape[0])
    info = held.get("info", {})
    metrics.update(info.get("metrics", {}))

    params = {
        **explicit_options(attack, to_params(attack)),
        "attack": attack_name,
        "model": model_name,
        "dataset": ctx["dataset"],
        "n_images": images.shape[0],
        "targets": ctx["targets"],
        "model_variant": ctx["variant"] or "default",
        **point.params,
        **info.get("params", {}),
    }
    notes = sorted({str(w.message) for w in caught})
    client.log_batch(
        run_id,
        params=as_params(params),
        tags=as_tags({"warnings": " | ".join(notes)[:4000]} if notes else {}),
    )
    client.log_inputs(
        run_id,
        datasets=[
            dataset_input(ctx["dataset"], "test", 0, images, labels, ctx.get("data_source", ""))
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = attack_table(result)
        table.to_parquet(folder / "attacks.parquet", index=False)
        table.to_csv(folder / "attacks.csv", index=False)
        images_cpu, labels_cpu = images.cpu(), labels.cpu()
        if result.targeted:
            shown = f"{type(attack).label} on model {model_name}"
            grid = plots.figure2_grid(result, images_cpu, labels_cpu, title=shown)
            plots.save_png(grid, folder / "figure2_grid.png")
        if result.flows is not None:
            hits = result.success.nonzero().flatten()
            index = int(hits[0]) if len(hits) else 0
            plots.save_png(
                plots.flow_quiver(result, index, images=images_cpu), folder / "flow_quiver.png"
            )
        plots.save_png(plots.target_heatmap(result), folder / "target_heatmap.png")
        # what the attack did inside the model: representation space, activations, Grad-CAM
        if point.views:
            save_views(model, images, result, folder / "views", max_points=VIEW_POINTS, dpi=100)
        client.log_artifacts(run_id, str(folder))
    metrics["trial_seconds"] = time.perf_counter() - start
    client.log_batch(
        run_id,
        metrics=as_metrics(views.to_mlflow(metrics)),
        tags=as_tags({NOTE_TAG: _description(point, metrics, params)}),
    )
    return metrics
