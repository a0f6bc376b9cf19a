"""A sweep against a real ``mlflow server`` on 127.0.0.1, read back as a researcher's UI would.

The server runs on a free port with a SQLite store and proxied artifacts in a temporary
folder (job execution off) and is stopped by the test. ``kappa_tau.py --smoke-test`` logs to
it over HTTP; then, through the client: the parent run's description and headline metrics,
its HTML report with embedded figures, the experiment's kind and saved runs view (the link
the sweep prints), and on every trial its dataset input, checkpoint tags, headline and
bookkeeping metric names, system metrics and figures.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
HEADLINE = ("success", "success_ci_low", "success_ci_high", "mean_flow_loss", "attacks_per_s")
FIGURES = ("figure2_grid.png", "flow_quiver.png", "target_heatmap.png")
PARENT_FIGURES = ("heatmap_kappa_tau_B.png", "vs_kappa.png", "vs_tau.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port>; its URL. Stopped after the module."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server_sweep(
    mlflow_server: str,
    ray_address: str,
    sweep_env: dict[str, str],
    sweep_store: Path,
    data_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("server-sweep")
    cmd = [
        sys.executable,
        str(REPO / "sweeps" / "kappa_tau.py"),
        "--smoke-test",
        "--address",
        ray_address,
        "--tracking-uri",
        mlflow_server,
        "--storage-path",
        str(tmp / "ray"),
        "--store",
        str(sweep_store),
        "--data-dir",
        str(data_root),
    ]
    proc = subprocess.run(cmd, env=sweep_env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "uri": mlflow_server, "tmp": tmp}


@pytest.mark.slow
def test_sweep_against_a_server_reads_back_as_a_researcher_expects(
    server_sweep: dict[str, Any], tmp_path: Path
) -> None:
    uri, out = server_sweep["uri"], server_sweep["proc"].stdout
    client = MlflowClient(uri)
    # smoke runs get their own experiment
    exp = client.get_experiment_by_name("kappa_tau-smoke")
    assert exp is not None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stadv.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]

    # the printed link opens the sweep's saved view in the model-training view
    key = f"sweep-{parent.info.run_id}"
    link = (
        f"{uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={key}"
    )
    assert link in out
    assert "To visualize your results with TensorBoard" not in out + server_sweep["proc"].stderr
    envelope = json.loads(exp.tags[f"mlflow.sharedViewState.{key}"])
    assert {"name", "createdAt", "updatedAt", "state"} <= set(envelope)
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    for col in ("params.`kappa`", "params.`tau`", "metrics.`success`", "metrics.`success_ci_low`"):
        assert col in state["selectedColumns"], col

    # the parent: description with the paper beside ours, headline metrics, HTML report
    note = parent.data.tags["mlflow.note.content"]
    assert "| model | paper (Xiao et al. 2018, Table 1)" in note and "| B | 99.98% |" in note
    assert parent.data.metrics["paper_success_B"] == pytest.approx(0.9998)
    assert 0 <= parent.data.metrics["success_at_base_B"] <= 1
    assert parent.data.metrics["time/overhead_pct"] > 0  # a percentage, as printed
    assert all(v != "None" for v in parent.data.params.values()), parent.data.params
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["mnist-test[0:4]"]
    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent")))
    html = (local / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(PARENT_FIGURES)
    for name in PARENT_FIGURES:
        assert (local / "figures" / name).is_file(), name

    for child in children:
        metrics, params, tags = child.data.metrics, child.data.params, child.data.tags
        assert child.info.run_name.startswith("B ")
        for name in HEADLINE:
            assert name in metrics, name
        assert metrics["success_ci_low"] <= metrics["success"] <= metrics["success_ci_high"]
        assert metrics["stats/attacks"] == 36.0 and "time/attack_s" in metrics
        assert any(k.startswith("system/") for k in metrics), sorted(metrics)
        assert params["wolfe"] == "weak" and "None" not in params.values()
        assert tags["checkpoint.sha256"] and tags["checkpoint.variant"] == "smoke"
        assert 0 < float(tags["checkpoint.test_accuracy"]) <= 1
        assert "success" in tags["mlflow.note.content"]
        inputs = child.inputs.dataset_inputs
        assert len(inputs) == 1
        ds = inputs[0].dataset
        assert ds.name == "mnist-test[0:4]" and len(ds.digest) == 16
        assert json.loads(ds.profile)["index_range"] == "0-3"
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert set(FIGURES) <= names, names
