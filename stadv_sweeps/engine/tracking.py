"""MLflow for the sweeps: the tracking store, the experiment, parent and child runs.

The tracking URI is made absolute (trials run in Ray's per-trial directories) and checked in
seconds before anything runs; for a local SQLite store the check also creates and migrates
the store in the driver alone (concurrent first writers race on the schema migration).

One parent run per sweep holds the parameters, the resolved grid (``stadv_sweep.json``, what
``--resume`` reads back) and the summary; each trial is a nested child run tagged with its
``stadv.trial_key``, so a trial can find its own finished run and never run twice.

For MLflow's UI: the experiment is marked as model development (``mlflow.experimentKind``),
each sweep saves a runs view on it (:func:`save_runs_view`, see
:mod:`~stadv_sweeps.engine.views`), runs carry a Markdown description
(``mlflow.note.content``), the evaluated images as a dataset input (:func:`dataset_input`)
and the attacked checkpoint (:func:`checkpoint_record`). No parameter reads ``None``: an
option left to its default is logged as the value the attack uses (:func:`explicit_options`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy
import ray
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

import stadv
from stadv.options import build, options
from stadv.registry import ATTACKS
from stadv.store import checkpoint_path
from stadv_sweeps.engine import views
from stadv_sweeps.engine.errors import ResultsError, SweepError
from stadv_sweeps.engine.runs import find_parent, search_all
from stadv_sweeps.engine.spec import Point
from stadv_sweeps.engine.tags import (
    PARENT_TAG,
    ROLE_TAG,
    STATE_FILE,
    SWEEP_TAG,
    TRIAL_KEY_TAG,
)

REPO = Path(__file__).resolve().parents[2]


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI with local paths made absolute (trials run in other directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if "://" not in uri:
        raise SweepError(
            f"tracking URI {uri!r} is a plain path: MLflow >= 3.13 no longer accepts file "
            f"stores; use sqlite:///{uri.rstrip('/')}.db or an http(s):// server"
        )
    return uri


@contextmanager
def _quick_http() -> Iterator[None]:
    """No retries and a short timeout, so an unreachable server fails in seconds."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_tracking(uri: str) -> None:
    """Fail in seconds, naming the URI, when the tracking store does not answer.

    For a local SQLite store this also creates and migrates it, in this one process, before
    any trial writes to it (concurrent first writers race on the schema migration).
    """
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise SweepError(f"tracking URI {uri} is unreachable: folder {folder} does not exist")
    try:
        with _quick_http():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store cannot be used; say which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SweepError(f"tracking URI {uri} is unreachable: {first[:300]}") from None


#: The experiment tag by which MLflow's UI picks its view (model development, not GenAI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Where MLflow's UI reads a run's (or an experiment's) Markdown description.
NOTE_TAG = "mlflow.note.content"
#: Saved views of MLflow's UI are experiment tags with this prefix.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def ui_command(uri: str) -> str:
    return views.ui_command(uri)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "stadv": stadv.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
    }


def as_params(options: Mapping[str, Any], prefix: str = "") -> list[Param]:
    return [Param(prefix + k, str(v)) for k, v in sorted(options.items())]


def as_tags(tags: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


def as_metrics(values: Mapping[str, Any]) -> list[Metric]:
    """The real numbers among ``values`` as MLflow metrics (anything else is left out), rounded
    to :data:`~stadv_sweeps.engine.views.SIGNIFICANT` significant digits."""
    now = int(time.time() * 1000)
    out = []
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(Metric(k, views.rounded(float(v)), now, 0))
    return out


def explicit_options(attack: Any, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` (option -> logged string) with every ``None`` option that stands for a
    default the attack resolves replaced by the value it uses, its ``effective_<option>``
    (``wolfe``: the solver's line search; ``init_scale``: the initialisation's). An option
    whose None is a value of its own (PGD's unseeded ``seed``) stays ``None``."""
    out = dict(values)
    for name in options(type(attack)):
        if name in out and getattr(attack, name) is None:
            effective = getattr(attack, f"effective_{name}", None)
            if effective is not None:
                out[name] = _text(effective)
    return out


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def explicit_parent_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A parent run's parameters with its attacks' ``None`` options made explicit (as
    :func:`explicit_options`): ``base.<option>`` of the grid sweeps' attack, and
    ``<attack>.<option>`` of the defense sweep's attacks."""
    out = dict(params)
    groups = {"base.": str(params.get("attack", "stadv"))}
    groups.update({f"{a}.": a for a in ATTACKS})
    for prefix, name in groups.items():
        values = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        if name not in ATTACKS or not values or all(v is not None for v in values.values()):
            continue
        try:
            attack = build(ATTACKS[name], values)
        except (TypeError, ValueError):
            continue  # leave them as they are: the plan's own values
        shown = explicit_options(attack, {k: _text(v) for k, v in values.items()})
        out.update({prefix + k: v for k, v in shown.items() if values[k] is None})
    return out


def set_experiment_kind(client: MlflowClient, exp_id: str) -> None:
    """Mark the experiment as model development, so MLflow's UI opens its runs, not the
    GenAI traces page (an experiment already marked otherwise is left alone)."""
    exp = client.get_experiment(exp_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) in (None, "", "no_inferred_type"):
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def save_runs_view(
    client: MlflowClient, exp_id: str, parent: Any, params: Sequence[str], name: str
) -> str:
    """Save the sweep's runs view on the experiment (its trials; ``params`` then the headline
    metrics as columns) and return its key (the URL's ``viewStateShareKey``)."""
    key = views.view_key(parent.info.run_id)
    state = views.runs_view_state(parent.info.run_id, params=params)
    client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + key, views.view_envelope(name, state))
    return key


def dataset_input(
    dataset: str, split: str, start: int, images: Any, labels: Any, source: str
) -> DatasetInput:
    """The evaluated images as an MLflow dataset input: name with the index range, digest of
    the tensors' bytes, the source folder, shape and class counts as its profile."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    n = int(images.shape[0])
    counts = labels.detach().cpu().bincount().tolist()
    profile = {
        "split": split,
        "index_range": f"{start}-{start + n - 1}",
        "num_images": n,
        "image_shape": list(images.shape[1:]),
        "class_counts": {str(c): int(k) for c, k in enumerate(counts) if k},
    }
    schema = {"images": f"float32 {list(images.shape)} in [0, 1]", "labels": f"int64 [{n}]"}
    ds = Dataset(
        name=f"{dataset}-{split}[{start}:{start + n}]",
        digest=h.hexdigest()[:16],
        source_type="local",
        source=json.dumps({"uri": source}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )
    return DatasetInput(ds, tags=[InputTag("mlflow.data.context", "evaluation")])


def checkpoint_record(
    model: str, dataset: str, *, store: str | None, variant: str = ""
) -> dict[str, str]:
    """The stored checkpoint of an undefended model, from its sidecar: path, SHA-256, test
    accuracy (empty when the store holds none)."""
    path = checkpoint_path(model, dataset, store=store, variant=variant)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    info = json.loads(sidecar.read_text())
    return {
        "checkpoint.path": str(path.resolve()),
        "checkpoint.sha256": str(info.get("sha256", "")),
        "checkpoint.test_accuracy": f"{float(info.get('test_accuracy', math.nan)):.4f}",
        "checkpoint.variant": variant or "default",
    }


def child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, key: str | None = None
) -> list[Any]:
    """The parent's (non-deleted) child runs, all of them or those of one trial key."""
    flt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if key is not None:
        flt += f" and tags.`{TRIAL_KEY_TAG}` = '{key}'"
    return search_all(client, experiment_id, flt)


def finished_keys(client: MlflowClient, exp_id: str, parent_id: str) -> set[str]:
    """Trial keys of the parent's FINISHED child runs."""
    runs = child_runs(client, exp_id, parent_id)
    return {r.data.tags.get(TRIAL_KEY_TAG, "") for r in runs if r.info.status == "FINISHED"}


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it if needed.

    With a SQLite store the artifacts go beside the database (``<db folder>/mlruns/<name>``);
    MLflow's own default, ``./mlruns`` under whatever directory the driver runs in, would
    scatter one sweep's files over every working directory it was started from.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise SweepError(
                f"MLflow experiment {name!r} is deleted; restore it or pick another name"
            )
        set_experiment_kind(client, str(exp.experiment_id))
        return str(exp.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        location = str(Path(uri[len("sqlite:///") :]).parent / "mlruns" / slug)
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    return str(client.create_experiment(name, artifact_location=location, tags=tags))


def create_parent(
    client: MlflowClient,
    exp_id: str,
    sweep: str,
    spec_json: Mapping[str, Any],
    points: Sequence[Point],
    params: Mapping[str, Any],
    *,
    script: str | None = None,
) -> Any:
    """The sweep's parent run, with ``params`` (and the trial count) as parameters and the
    whole resolved grid as ``stadv_sweep.json`` (what ``--resume`` reads back); ``script``
    names ``sweeps/<script>.py`` (default: the sweep's name)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        exp_id,
        run_name=f"{sweep}-{stamp}",
        tags={
            ROLE_TAG: "parent",
            SWEEP_TAG: sweep,
            "mlflow.source.name": f"sweeps/{script or sweep}.py",
            "mlflow.source.git.commit": git_commit(),
            "git_commit": git_commit(),
            "hostname": socket.gethostname(),
            **{f"version.{k}": v for k, v in versions().items()},
        },
    )
    shown = explicit_parent_params({**params, "trials": len(points)})
    client.log_batch(run.info.run_id, params=as_params(shown))
    with tempfile.TemporaryDirectory() as tmp:
        state = {"spec": dict(spec_json), "points": [p.to_json() for p in points]}
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=1))
        client.log_artifact(run.info.run_id, str(Path(tmp) / STATE_FILE))
    return client.get_run(run.info.run_id)


def find_resumable(
    client: MlflowClient, exp_id: str, sweep: str
) -> tuple[Any, dict[str, Any]] | None:
    """The latest sweep of this kind in the experiment and its saved spec (as JSON); None if
    it finished.

    Raises ``SweepError`` when there is no sweep to resume at all.
    """
    try:
        parent = find_parent(client, exp_id, sweep=sweep)
    except ResultsError:
        name = client.get_experiment(exp_id).name
        raise SweepError(f"nothing to resume: experiment {name!r} holds no {sweep} sweep") from None
    if parent.info.status == "FINISHED":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, STATE_FILE, tmp)
        state = json.loads(Path(path).read_text())
    return parent, dict(state["spec"])
