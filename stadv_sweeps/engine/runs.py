"""Reading a sweep back from MLflow: its parent run, its trials as a DataFrame.

    client = MlflowClient(uri)
    parent = find_parent(client, experiment_id(client, "ablation"))
    df = runs_frame(client, parent)          # one row per finished trial
    base_options(parent)                     # the sweep's base setting, typed

Attack options come back typed by the attack's own schema (:func:`stadv.options.parse_value`,
the attack named by the run's ``attack`` parameter), so a value reads back as it was set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from stadv.options import options, parse_value
from stadv.registry import ATTACKS
from stadv_sweeps.engine.errors import ResultsError
from stadv_sweeps.engine.tags import PARENT_TAG, ROLE_TAG, SWEEP_TAG, TRIAL_KEY_TAG


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ResultsError(f"no MLflow experiment named {name!r} at {client.tracking_uri}")
    return str(exp.experiment_id)


def find_parent(
    client: MlflowClient, exp_id: str, *, run_id: str | None = None, sweep: str | None = None
) -> Any:
    """The sweep's parent run: ``run_id``, else the latest parent run in the experiment."""
    if run_id is not None:
        return client.get_run(run_id)
    flt = f"tags.`{ROLE_TAG}` = 'parent'"
    if sweep is not None:
        flt += f" and tags.`{SWEEP_TAG}` = '{sweep}'"
    runs = client.search_runs(
        [exp_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise ResultsError(f"experiment {exp_id} holds no sweep (no run tagged {ROLE_TAG}=parent)")
    return runs[0]


def search_all(client: MlflowClient, exp_id: str, filter_string: str) -> list[Any]:
    """Every (non-deleted) run of the experiment matching the filter, page by page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def typed_params(params: Mapping[str, str], *, prefix: str = "") -> dict[str, Any]:
    """Run parameters (``prefix`` stripped, others dropped) typed: the attack's options (the
    attack named by ``params["attack"]``, default stAdv) by its schema, the rest as numbers
    where they are numbers."""
    raw = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    cls = ATTACKS.get(params.get("attack", "stadv"), ATTACKS["stadv"])
    known = options(cls)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = parse_value(cls, k, v) if k in known else _number_or_text(v)
        except ValueError:  # a run logged by another version of the attack: keep its text
            out[k] = _number_or_text(v)
    return out


def base_options(parent: Any) -> dict[str, Any]:
    """The sweep's base setting (``base.*`` parameters of the parent run), typed."""
    return typed_params(parent.data.params, prefix="base.")


def _number_or_text(text: str) -> Any:
    if text == "None":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def runs_frame(client: MlflowClient, parent: Any, *, finished_only: bool = True) -> pd.DataFrame:
    """One row per child run of ``parent``: run id, label, model, the options, the metrics.

    The columns are the parameter names themselves; options typed as :func:`typed_params`.
    """
    flt = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    runs = search_all(client, parent.info.experiment_id, flt)
    rows = []
    for r in runs:
        if finished_only and r.info.status != "FINISHED":
            continue
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "label": r.data.tags.get("mlflow.runName", ""),
            "trial_key": r.data.tags.get(TRIAL_KEY_TAG, ""),
            "start_time": r.info.start_time,
        }
        row.update(typed_params(r.data.params))
        row.update(r.data.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["model", "start_time"]).reset_index(drop=True)
    return df
