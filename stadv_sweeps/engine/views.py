"""How a sweep reads in MLflow's UI: metric names, rounded values, and the saved runs view.

**Metric names.** A trial's metrics (:func:`stadv.metrics.summarize` plus the trial's own) are
computed under their library names (``targeted_success_rate``, ...), which the tables, the
Tune progress lines and the reports use. In MLflow they are logged under :data:`MLFLOW_NAMES`:
a few headline metrics with short names that stay distinct in a narrow column header
(``success``, ``success_ci_low``, ``success_ci_high``, ``untargeted_success``,
``clean_accuracy``, ``mean_flow_loss``, ``mean_l2``, ``attacks_per_s``, ``test_accuracy``),
and the bookkeeping under ``stats/`` and ``time/``. MLflow 3.17's chart view puts every
metric whose name has a ``/`` in a section named by its prefix (``stats``, ``time``,
``system``) and the others in the first section, so the headline metrics are the charts a
reader sees first. :func:`to_mlflow` and :func:`from_mlflow` translate both ways (names not in
the map pass unchanged).

**Values.** MLflow stores metrics as doubles and its UI prints every digit
(``0.9444444444444444``); there is no display precision to set. Logged values are rounded to
:data:`SIGNIFICANT` significant digits (relative error below 5e-8, far below any interval
here); exact per-attack results are in each trial's ``attacks.parquet``.

**The runs view.** The UI (3.15+) keeps *saved views* as experiment tags
``mlflow.sharedViewState.<key>`` holding an envelope ``{"name", "createdAt", "updatedAt",
"state"}`` whose ``state`` is the JSON of the runs page's state (columns, their order,
filter, sort); ``?viewStateShareKey=<key>`` opens one, and it is listed in the page's
"Views" menu. The runs page shows ML runs when the URL says ``workflowType=machine_learning``
(the UI's own switch; the experiment tag ``mlflow.experimentKind`` is also set, for UIs that
read it). A saved view cannot expand a parent run (the UI leaves ``runsExpanded`` out of
shared state), so the sweep's view filters on its trials (``tags.mlflow.parentRunId``): they
show as top-level rows, none hidden under a collapsed parent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

#: Library metric name -> the name logged in MLflow (others are logged as they are).
MLFLOW_NAMES: dict[str, str] = {
    "targeted_success_rate": "success",
    "targeted_success_ci_low": "success_ci_low",
    "targeted_success_ci_high": "success_ci_high",
    "untargeted_success_rate": "untargeted_success",
    "untargeted_success_ci_low": "stats/untargeted_ci_low",
    "untargeted_success_ci_high": "stats/untargeted_ci_high",
    "attacks_per_second": "attacks_per_s",
    "attacks": "stats/attacks",
    "n_images": "stats/n_images",
    "median_flow_loss": "stats/median_flow_loss",
    "mean_flow_loss_successful": "stats/mean_flow_loss_successful",
    "median_l2": "stats/median_l2",
    "mean_linf": "stats/mean_linf",
    "mean_iterations": "stats/mean_iterations",
    "mean_evaluations": "stats/mean_evaluations",
    "nan_count": "stats/nan_count",
    "restarted_attacks": "stats/restarted_attacks",
    "mean_abs_flow": "stats/mean_abs_flow",
    "max_abs_flow": "stats/max_abs_flow",
    "seconds": "time/attack_s",
    "trial_seconds": "time/trial_s",
}
LIBRARY_NAMES = {v: k for k, v in MLFLOW_NAMES.items()}
#: The headline metrics of a trial, in the order the runs view shows them.
HEADLINE = (
    "success",
    "success_ci_low",
    "success_ci_high",
    "untargeted_success",
    "mean_flow_loss",
    "mean_l2",
    "clean_accuracy",
    "attacks_per_s",
)
SIGNIFICANT = 7
#: Where ``mlflow ui`` listens unless told otherwise (what the printed command says).
LOCAL_UI = "http://127.0.0.1:5000"


def rounded(value: float) -> float:
    """``value`` to :data:`SIGNIFICANT` significant digits (NaN and infinities unchanged)."""
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{SIGNIFICANT}g}")


def to_mlflow(metrics: Mapping[str, float]) -> dict[str, float]:
    """Library metric names -> MLflow names."""
    return {MLFLOW_NAMES.get(k, k): v for k, v in metrics.items()}


def from_mlflow(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow metric names -> library names (what the tables read)."""
    return {LIBRARY_NAMES.get(k, k): v for k, v in metrics.items()}


def frame_from_mlflow(df: Any) -> Any:
    """A runs frame (:func:`~stadv_sweeps.engine.runs.runs_frame`) with library names (a
    metric whose library name is already a column, e.g. the ``n_images`` parameter, is
    dropped: they hold the same value)."""
    present = set(df.columns)
    drop = [k for k, v in LIBRARY_NAMES.items() if k in present and v in present]
    rename = {k: v for k, v in LIBRARY_NAMES.items() if k in present and v not in present}
    return df.drop(columns=drop).rename(columns=rename)


# ---------------------------------------------------------------------------------------------
# The UI
# ---------------------------------------------------------------------------------------------
def ui_base(uri: str) -> str:
    """The address of the UI serving ``uri``: the server itself, or ``mlflow ui``'s."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return LOCAL_UI


def ui_command(uri: str) -> str:
    """The command serving a local store's UI (a server's address serves its own)."""
    if uri.startswith(("http://", "https://")):
        return f"open {ui_base(uri)} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def view_key(parent_run_id: str) -> str:
    """The saved view's key (URL-safe) of the sweep with this parent run."""
    return f"sweep-{parent_run_id}"


def runs_url(uri: str, experiment_id: str, key: str | None = None) -> str:
    """The link opening the experiment's runs in the model-training view (and a saved view)."""
    query: dict[str, str] = {"workflowType": "machine_learning"}
    if key:
        query["viewStateShareKey"] = key
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The link opening one run's page in the model-training view."""
    query = urlencode({"workflowType": "machine_learning"})
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}?{query}"


def column(kind: str, name: str) -> str:
    """The UI's column key (``metrics.`success```, ``params.`kappa```, ``attributes.`Dataset```)."""
    return f"{kind}.`{name}`"


def runs_view_state(
    parent_run_id: str,
    *,
    params: Sequence[str],
    metrics: Sequence[str] = HEADLINE,
    order_by: str = "success",
    ascending: bool = False,
) -> dict[str, Any]:
    """The runs page's state for one sweep: its trials (most successful first by default),
    the parameters that tell them apart, then the headline metrics."""
    columns = [
        *(column("params", p) for p in params),
        *(column("metrics", m) for m in metrics),
        column("attributes", "Dataset"),
        column("attributes", "Models"),
    ]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": column("metrics", order_by),
        "orderByAsc": ascending,
        "selectedColumns": columns,
        "columnOrder": columns,
        # narrow enough for the headline columns to fit beside the run names at 1600 px
        "columnWidths": {
            **{column("params", p): 64 for p in params},
            **{column("metrics", m): 100 for m in metrics},
        },
        "runListHidden": False,
        **charts(metrics),
    }


#: The chart sections of the runs page, in this order: MLflow's own names for the metrics
#: without a prefix ("Model metrics": the headline ones) and ``system/``, ours for the rest.
SECTIONS = ("Model metrics", "stats", "time", "System metrics")


def charts(metrics: Sequence[str]) -> dict[str, Any]:
    """The runs page's chart layout: the headline metrics' bar charts first, in
    :data:`SECTIONS` order. Left to itself the page sorts its sections by name and puts
    "Model metrics" after every prefixed one (``stats``, ``time``); a layout marked as
    reordered is kept, and metrics not charted here are added to their sections."""
    sections = [
        {"uuid": f"section-{i}", "name": name, "display": True, "isReordered": False}
        for i, name in enumerate(SECTIONS)
    ]
    cards = [
        {
            "type": "BAR",
            "uuid": f"chart-{m}",
            "metricSectionId": "section-0",
            "isGenerated": True,
            "deleted": False,
            "metricKey": m,
            "displayName": m,
        }
        for m in metrics
    ]
    return {"compareRunSections": sections, "compareRunCharts": cards, "isAccordionReordered": True}


def view_envelope(name: str, state: Mapping[str, Any], now_ms: int | None = None) -> str:
    """A saved view as the UI stores it (the experiment tag's value)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps(
        {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(dict(state))}
    )
