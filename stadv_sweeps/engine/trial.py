"""One trial, in a Ray worker: attack a model, log a nested MLflow child run, report to Tune.

:func:`run_trial` is the Tune function. It first looks under the sweep's parent run for a
FINISHED child run with its trial key and, if there is one, reports it instead of running
again; unfinished leftovers of a killed attempt are deleted first. So Ray's retries and
``--resume`` never leave duplicates. Otherwise it rebuilds its model from the bundle in
Ray's object store (:mod:`bundles`), runs its attack over the images and logs parameters,
metrics, tags and artifacts (the Figure-2 grid, a flow quiver for stAdv, the
target-vs-prediction heat map and the per-attack table as Parquet and CSV).
"""

from __future__ import annotations

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
from ray import tune

from stadv import plots
from stadv.metrics import attack_table, summarize
from stadv.models import predict
from stadv.options import to_params
from stadv.targets import as_target_spec
from stadv_sweeps.engine.bundles import to_module
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.engine.tags import PARENT_TAG, SWEEP_TAG, TRIAL_KEY_TAG
from stadv_sweeps.engine.tracking import as_metrics, as_params, as_tags, child_runs


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
        tune.report({**run.data.metrics, "mlflow_run_id": run.info.run_id, "reused": 1})
        return
    for r in previous:  # a killed or failed attempt: its partial run must not linger
        client.delete_run(r.info.run_id)

    gpu_ids = ray.get_gpu_ids()
    device = torch.device("cuda" if gpu_ids and torch.cuda.is_available() else "cpu")
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
        "mlflow.source.name": f"sweeps/{ctx['sweep']}.py",
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
    }
    # tag values must be strings (the REST store rejects anything else)
    run = client.create_run(exp_id, run_name=point.label, tags={k: str(v) for k, v in tags.items()})
    run_id = run.info.run_id
    try:
        metrics = _attack_and_log(client, run_id, point, ctx, data, device)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    tune.report({**metrics, "mlflow_run_id": run_id, "reused": 0})


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
    targets = as_target_spec(ctx["targets"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attack(model, images, labels, targets=targets)
    metrics: dict[str, float] = dict(summarize(result))
    metrics["clean_accuracy"] = clean_accuracy
    metrics["n_images"] = float(images.shape[0])
    info = held.get("info", {})
    metrics.update(info.get("metrics", {}))

    params = {
        **to_params(attack),
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
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = attack_table(result)
        table.to_parquet(folder / "attacks.parquet", index=False)
        table.to_csv(folder / "attacks.csv", index=False)
        images_cpu, labels_cpu = images.cpu(), labels.cpu()
        if result.targeted:
            grid = plots.figure2_grid(result, images_cpu, labels_cpu)
            if attack_name != "stadv":
                grid.suptitle(f"{attack_name}: rows = source class, columns = target class")
            plots.save_png(grid, folder / "figure2_grid.png")
        if result.flows is not None:
            hits = result.success.nonzero().flatten()
            index = int(hits[0]) if len(hits) else 0
            plots.save_png(
                plots.flow_quiver(result, index, images=images_cpu), folder / "flow_quiver.png"
            )
        plots.save_png(plots.target_heatmap(result), folder / "target_heatmap.png")
        client.log_artifacts(run_id, str(folder))
    metrics["trial_seconds"] = time.perf_counter() - start
    client.log_batch(run_id, metrics=as_metrics(metrics))
    return metrics
