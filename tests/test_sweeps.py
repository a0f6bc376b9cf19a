"""The sweep scripts, run for real as users run them: ``python sweeps/<name>.py ...``.

Each sweep runs as a subprocess against a temporary SQLite MLflow store, joining the session's
Ray instance (``ray_address``) unless a test is about the embedded one. The smoke models are
quick-trained once into a session store. Checked: parent and child runs with their params,
metrics, tags and artifacts (valid PNGs, tables that read back and agree with the metrics);
a killed trial worker is retried; an interrupted driver resumes without duplicate runs; an
unreachable tracking URI and a bad grid value fail in seconds before anything runs. The
defense sweep (``sweeps/defense_sweep.py``) logs its table of every attack against every defense.
A few tests import the sweep modules themselves (``sweep_modules``), as the scripts do; the
checks that stop a script before any work (bad values, dry runs) call its ``main`` in this
process (the ``sweep_main`` fixture): the same code as the script, without a subprocess's
imports per case.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
#: the ``sweep_main`` fixture (tests/conftest.py): a sweep script's main, run in this process
SweepMain = Callable[[str, list[str]], "subprocess.CompletedProcess[str]"]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMOKE_KAPPA_TAU = {("0.0", "0.05"), ("0.0", "0.0"), ("0.5", "0.05"), ("0.5", "0.0")}
# the names trials log in MLflow (stadv_sweeps.engine.views.MLFLOW_NAMES): headline metrics
# that stay distinct in a narrow column header, bookkeeping under stats/ and time/
RATE_METRICS = (
    "success",
    "success_ci_low",
    "success_ci_high",
    "untargeted_success",
    "clean_accuracy",
)
OTHER_METRICS = (
    "mean_flow_loss",
    "stats/median_flow_loss",
    "mean_l2",
    "stats/mean_linf",
    "stats/mean_iterations",
    "time/attack_s",
    "attacks_per_s",
)
CHILD_ARTIFACTS = (
    "figure2_grid.png",
    "flow_quiver.png",
    "target_heatmap.png",
    "attacks.parquet",
    "attacks.csv",
    "views",  # representation space, activation differences, Grad-CAM (stadv.views)
)
VIEW_PNGS = ("representation_space.png", "activation_differences.png", "grad_cam.png")


def sweep_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / f"{script}.py"), *args]


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def common_args(tmp: Path, store: Path, data_root: Path, experiment: str) -> list[str]:
    return [
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--experiment-name",
        experiment,
        "--storage-path",
        str(tmp / "ray"),
        "--store",
        str(store),
        "--data-dir",
        str(data_root),
    ]


def listening_addresses(pid: int) -> set[str]:
    """Addresses of the listening TCP sockets of ``pid`` and its descendants."""
    try:
        root = psutil.Process(pid)
        pids = {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def runs_of(uri: str, experiment: str) -> tuple[MlflowClient, list[Any], list[Any]]:
    """(client, parent runs, child runs) of an experiment; deleted runs are left out."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stadv.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 100


class Sweep:
    """A sweep script running in the background, its output collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def store_ready(self) -> bool:
        """The driver has created the store and the parent run: safe to read it from here
        (a second process opening a fresh SQLite store would race its schema migration)."""
        return "MLflow: experiment" in self.output

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the sweep ran over {timeout} s:\n{self.output[-4000:]}")
        self.reader.join(10)
        return code

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        """Poll ``predicate`` until it returns something true; fail if the sweep exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate() if self.store_ready else None
            if value:
                return value
            if self.proc.poll() is not None:
                self.reader.join(10)
                pytest.fail(
                    f"the sweep exited ({self.proc.returncode}) before {what}:\n{self.output[-4000:]}"
                )
            time.sleep(0.25)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{self.output[-4000:]}")


@pytest.fixture(scope="module")
def smoke_runner(
    tmp_path_factory: pytest.TempPathFactory,
    ray_address: str,
    sweep_env: dict[str, str],
    sweep_store: Path,
    data_root: Path,
) -> Any:
    """Runs ``<script>.py --smoke-test`` into a fresh SQLite store, joining the session's Ray."""

    def smoke(script: str, experiment: str) -> dict[str, Any]:
        tmp = tmp_path_factory.mktemp(script)
        args = common_args(tmp, sweep_store, data_root, experiment)
        start = time.monotonic()
        # 900 s: the defense sweep's smoke test runs 60 trials (10 defenses x 6 attacks)
        cmd = sweep_cmd(script, "--smoke-test", "--address", ray_address, *args)
        proc = run(cmd, sweep_env, timeout=900)
        return {
            "proc": proc,
            "seconds": time.monotonic() - start,
            "uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "tmp": tmp,
            "experiment": experiment,
            "store": sweep_store,
        }

    return smoke


@pytest.fixture(scope="module")
def kappa_tau_smoke(smoke_runner: Any) -> dict[str, Any]:
    """``kappa_tau.py --smoke-test`` once, into a fresh SQLite store."""
    return smoke_runner("kappa_tau", "kt-smoke")


@pytest.mark.slow
def test_kappa_tau_smoke_logs_parent_and_child_runs(kappa_tau_smoke: dict[str, Any]) -> None:
    proc = kappa_tau_smoke["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    uri = kappa_tau_smoke["uri"]
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    assert "4/4 trials finished" in proc.stdout
    assert "Paper (Xiao et al. 2018, Table 1" in proc.stdout

    client, parents, children = runs_of(uri, kappa_tau_smoke["experiment"])
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "4"
    assert parent.data.params["base.tau"] == "0.05"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {(c.data.params["kappa"], c.data.params["tau"]) for c in children} == SMOKE_KAPPA_TAU
    assert len({c.data.tags["stadv.trial_key"] for c in children}) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        params, metrics, tags = child.data.params, child.data.metrics, child.data.tags
        assert params["model"] == "B" and params["max_iterations"] == "20"
        assert params["solver"] == "lbfgs" and params["targets"] == "all"
        assert params["model_variant"] == "smoke"
        for key in RATE_METRICS:
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
        for key in OTHER_METRICS:
            assert math.isfinite(metrics[key]) and metrics[key] >= 0, (key, metrics[key])
        rate = metrics["success"]
        assert metrics["success_ci_low"] <= rate <= metrics["success_ci_high"]
        assert metrics["stats/attacks"] == 36.0  # 4 images x 9 targets
        assert tags["model"] == "B" and tags["dataset"] == "mnist"
        assert tags["device"].startswith("cpu")
        assert tags["version.torch"] and tags["version.ray"] and tags["version.mlflow"]
        assert tags["git_commit"]
        assert tags["torch_threads"] == "1"


@pytest.mark.slow
def test_kappa_tau_smoke_artifacts_are_valid(
    kappa_tau_smoke: dict[str, Any], tmp_path: Path
) -> None:
    assert kappa_tau_smoke["proc"].returncode == 0, kappa_tau_smoke["proc"].stderr[-3000:]
    client, parents, children = runs_of(kappa_tau_smoke["uri"], kappa_tau_smoke["experiment"])
    # artifacts live beside the SQLite file, not under the directory the script ran in
    exp = client.get_experiment_by_name(kappa_tau_smoke["experiment"])
    assert exp.artifact_location == str(kappa_tau_smoke["tmp"] / "mlruns" / "kt-smoke")
    for child in children:
        assert (Path(child.info.artifact_uri) / "figure2_grid.png").is_file()
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert set(CHILD_ARTIFACTS) <= names, names
        local = Path(
            client.download_artifacts(child.info.run_id, "", str(tmp_path / child.info.run_id))
        )
        for png in ("figure2_grid.png", "flow_quiver.png", "target_heatmap.png"):
            assert is_png(local / png), png
        for png in VIEW_PNGS:
            assert is_png(local / "views" / png), png
        table = pd.read_parquet(local / "attacks.parquet")
        assert len(table) == 36
        assert set(table["target"]) <= set(range(10))
        assert (table["target"] != table["label"]).all()
        # the table and the logged metric describe the same attacks
        assert table["success"].mean() == pytest.approx(child.data.metrics["success"])
        csv = pd.read_csv(local / "attacks.csv")
        assert list(csv["prediction"]) == list(table["prediction"])

    parent = parents[0]
    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent")))
    trials = pd.read_csv(local / "trials.csv")
    assert len(trials) == 4 and set(trials["model"]) == {"B"}
    assert len(pd.read_parquet(local / "trials.parquet")) == 4
    for name in ("heatmap_kappa_tau_B.png", "vs_kappa.png", "vs_tau.png"):
        assert is_png(local / "figures" / name), name
    report = (local / "report.md").read_text()
    assert "## Success over kappa x tau" in report
    assert (local / "stadv_sweep.json").is_file()


@pytest.mark.slow
def test_results_report_from_the_command_line(
    kappa_tau_smoke: dict[str, Any], sweep_env: dict[str, str]
) -> None:
    assert kappa_tau_smoke["proc"].returncode == 0, kappa_tau_smoke["proc"].stderr[-3000:]
    out = kappa_tau_smoke["tmp"] / "report" / "report.md"
    out.parent.mkdir()
    cmd = sweep_cmd(
        "results",
        "--tracking-uri",
        kappa_tau_smoke["uri"],
        "--experiment",
        "kt-smoke",
        "--out",
        str(out),
    )
    proc = run(cmd, sweep_env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Which choice explains the failed reproductions",
        "## The paper's Table 1 beside ours",
        "## Best setting per model",
        "## Success over kappa x tau",
        "## All trials",
    ):
        assert heading in text, heading
    assert "| B | 0.9998 |" in text  # the paper's number for model B beside ours
    for choice in ("kappa=0.5", "tau=0"):
        assert f"| {choice} |" in text, choice
    figures = sorted((out.parent / "report_files").glob("*.png"))
    assert {f.name for f in figures} == {"heatmap_kappa_tau_B.png", "vs_kappa.png", "vs_tau.png"}
    assert all(is_png(f) for f in figures)
    for f in figures:
        assert f"report_files/{f.name}" in text


@pytest.mark.slow
def test_results_smoke_test_runs_the_smoke_sweep_and_reports_it(
    tmp_path: Path,
    ray_address: str,
    sweep_env: dict[str, str],
    sweep_store: Path,
    data_root: Path,
) -> None:
    out = tmp_path / "smoke.md"
    cmd = sweep_cmd(
        "results",
        "--smoke-test",
        "--address",
        ray_address,
        "--store",
        str(sweep_store),
        "--data-dir",
        str(data_root),
        "--out",
        str(out),
    )
    proc = run(cmd, sweep_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    text = out.read_text()
    assert "## The paper's Table 1 beside ours" in text and "| B | 0.9998 |" in text
    trials = pd.read_csv(tmp_path / "smoke_files" / "trials.csv")
    assert len(trials) == 4 and set(trials["model"]) == {"B"}
    assert {(float(k), float(t)) for k, t in zip(trials["kappa"], trials["tau"], strict=True)} == {
        (float(k), float(t)) for k, t in SMOKE_KAPPA_TAU
    }
    assert trials["targeted_success_rate"].between(0, 1).all()
    figures = sorted((tmp_path / "smoke_files").glob("*.png"))
    assert figures and all(is_png(f) for f in figures)
    # the smoke sweep's store stays beside the report, for `mlflow ui`
    _, parents, children = runs_of(
        f"sqlite:///{tmp_path / 'smoke_sweep' / 'mlflow.db'}", "results-smoke"
    )
    assert len(parents) == 1 and len(children) == 4


def test_results_without_a_store_names_the_missing_arguments(sweep_main: SweepMain) -> None:
    proc = sweep_main("results", ["--out", "never.md"])
    assert proc.returncode == 2
    assert "--tracking-uri, --experiment" in proc.stderr
    assert not (REPO / "never.md").exists()


@pytest.mark.slow
def test_ablation_smoke_with_embedded_ray(
    tmp_path: Path, sweep_env: dict[str, str], sweep_store: Path, data_root: Path
) -> None:
    """No --address: the script starts (and stops) its own Ray, as a local user's run does,
    and that Ray listens on the loopback interface only (its servers' sockets are watched
    while the sweep runs)."""
    args = common_args(tmp_path, sweep_store, data_root, "ab-smoke")
    sweep = Sweep(sweep_cmd("ablation", "--smoke-test", *args), sweep_env)
    seen: set[str] = set()
    deadline = time.monotonic() + 400
    while sweep.proc.poll() is None and time.monotonic() < deadline:
        seen |= listening_addresses(sweep.proc.pid)
        time.sleep(0.5)
    code = sweep.wait(timeout=60)
    assert code == 0, sweep.output[-4000:]
    print("listening addresses seen during the sweep:", sorted(seen))
    assert seen, "no listening socket seen: the probe did not see Ray's servers"
    assert seen <= LOOPBACK, f"non-loopback listeners: {sorted(seen - LOOPBACK)}"
    client, parents, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "ab-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    names = sorted(c.info.run_name for c in children)
    assert names == ["B base", "B keep=last", "B loss_input=softmax"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["tau"] == "0.05" and child.data.params["kappa"] == "0.0"
        assert 0 <= child.data.metrics["success"] <= 1
    local = Path(client.download_artifacts(parents[0].info.run_id, "", str(tmp_path / "parent")))
    effects = pd.read_json(local / "effects.json")
    assert set(effects["choice"]) == {"keep=last", "loss_input=softmax"}
    assert list(effects["rank"]) == [1, 2]
    assert effects["delta_success"].is_monotonic_increasing


@pytest.mark.slow
def test_killed_trial_worker_is_retried(
    tmp_path: Path, ray_address: str, sweep_env: dict[str, str], sweep_store: Path, data_root: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = common_args(tmp_path, sweep_store, data_root, "kill")
    # more iterations, so the first trial is still attacking when it is killed
    cmd = sweep_cmd(
        "kappa_tau", "--smoke-test", "--address", ray_address, "--max-iterations", "150", *args
    )
    sweep = Sweep(cmd, sweep_env)

    def running_child() -> Any:
        children = runs_of(uri, "kill")[2]
        return next((c for c in children if c.info.status == "RUNNING"), None)

    victim = sweep.wait_for(running_child, 240, "a running trial")
    pid = int(victim.data.tags["pid"])
    os.kill(pid, signal.SIGKILL)  # the Ray worker running that trial
    code = sweep.wait(400)
    out = sweep.output
    assert code == 0, out[-4000:]
    assert "retry" in out
    client, parents, children = runs_of(uri, "kill")
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    keys = [c.data.tags["stadv.trial_key"] for c in children]
    assert len(set(keys)) == 4
    # the killed attempt's run was removed, and its trial ran again in another process
    assert client.get_run(victim.info.run_id).info.lifecycle_stage == "deleted"
    again = next(
        c for c in children if c.data.tags["stadv.trial_key"] == victim.data.tags["stadv.trial_key"]
    )
    assert again.data.tags["pid"] != str(pid)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_driver_resumes_without_duplicates(
    how: str,
    tmp_path: Path,
    ray_address: str,
    sweep_env: dict[str, str],
    sweep_store: Path,
    data_root: Path,
) -> None:
    """Ctrl-C (Tune saves and stops; the parent run is marked KILLED) or a hard kill (no
    clean-up at all; the parent stays RUNNING): ``--resume`` runs only what did not finish."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*common_args(tmp_path, sweep_store, data_root, "resume"), "--address", ray_address]
    cmd = sweep_cmd("kappa_tau", "--smoke-test", "--max-iterations", "150", *args)
    sweep = Sweep(cmd, sweep_env)

    def one_finished() -> bool:
        return any(c.info.status == "FINISHED" for c in runs_of(uri, "resume")[2])

    sweep.wait_for(one_finished, 240, "a finished trial")
    sweep.proc.send_signal(getattr(signal, how))
    code = sweep.wait(300)
    out = sweep.output
    if how == "SIGINT":
        assert code == 130, out[-4000:]
        assert "--resume" in out
        assert runs_of(uri, "resume")[1][0].info.status == "KILLED"
    else:
        assert code == -signal.SIGKILL
        time.sleep(3)  # Ray ends the dead driver's trial actors
    _, parents, children = runs_of(uri, "resume")
    before = {c.info.run_id for c in children if c.info.status == "FINISHED"}
    assert 1 <= len(before) < 4

    proc = run(sweep_cmd("kappa_tau", "--resume", *args), sweep_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming sweep" in proc.stdout
    assert f"{len(before)} finished before" in proc.stdout
    client, parents, children = runs_of(uri, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["stadv.trial_key"] for c in children}) == 4
    assert before <= {c.info.run_id for c in children}  # finished trials were not run again

    # resuming a finished sweep is a no-op
    proc = run(sweep_cmd("kappa_tau", "--resume", *args), sweep_env)
    assert proc.returncode == 0 and "nothing to resume" in proc.stdout
    assert len(runs_of(uri, "resume")[2]) == 4


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["http", "sqlite"])
def test_unreachable_tracking_uri_fails_fast(
    kind: str, tmp_path: Path, sweep_env: dict[str, str], data_root: Path
) -> None:
    uri = (
        f"http://127.0.0.1:{closed_port()}"
        if kind == "http"
        else f"sqlite:///{tmp_path}/no/such/dir/m.db"
    )
    start = time.monotonic()
    proc = run(
        sweep_cmd(
            "kappa_tau",
            "--smoke-test",
            "--tracking-uri",
            uri,
            "--storage-path",
            str(tmp_path / "ray"),
        ),
        sweep_env,
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 2
    assert f"tracking URI {uri} is unreachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ray").exists()
    assert seconds < 60, f"took {seconds:.0f} s"  # mostly Python imports on a busy 2-core box


@pytest.mark.parametrize(
    ("extra", "config", "message"),
    [
        (["--solver", "bogus"], None, "unknown solver 'bogus'"),
        (["--tau", "-1"], None, "tau must be a finite number >= 0, got -1.0"),
        (["--max-iterations", "ten"], None, "max_iterations='ten' is not a valid int"),
        (
            [],
            ("grid.yaml", "grid:\n  kappa: [0, 0.5]\n  taus: [0.1]\n"),
            "unknown attack option 'taus'",
        ),
        ([], ("grid.toml", "n_images = 2\nepochs = 3\n"), "unknown key 'epochs'"),
        ([], ("grid.toml", "[grid]\npadding = ['border', 'mirror']\n"), "unknown padding 'mirror'"),
        ([], ("grid.yaml", "models: [A, D]\n"), "unknown model 'D'"),
    ],
)
def test_bad_grid_value_fails_before_anything_runs(
    extra: list[str],
    config: tuple[str, str] | None,
    message: str,
    tmp_path: Path,
    sweep_main: SweepMain,
) -> None:
    if config is not None:
        (tmp_path / config[0]).write_text(config[1])
        extra = [*extra, "--config", str(tmp_path / config[0])]
    assert_fails_before_anything_runs("kappa_tau", extra, message, tmp_path, sweep_main)


def assert_fails_before_anything_runs(
    script: str, extra: list[str], message: str, tmp_path: Path, sweep_main: SweepMain
) -> None:
    """The script exits with 2 and ``message``, before touching the tracking store or Tune
    (its ``main`` in this process: the ``sweep_main`` fixture)."""
    args = [
        *extra,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--storage-path",
        str(tmp_path / "ray"),
    ]
    proc = sweep_main(script, args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # failed before touching the tracking store
    assert not (tmp_path / "ray").exists()


def test_config_file_and_command_line_build_the_grid(tmp_path: Path, sweep_main: SweepMain) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "models: [B, C]\n"
        "n_images: 3\n"
        "attack:\n  max_iterations: 50\n  pgtol: 1e-6\n"  # YAML reads 1e-6 as a string: coerced
        "grid:\n  - {tau: [0.05, 0.01]}\n  - {keep: [last]}\n"
    )
    argv = ["--config", str(config), "--kappa", "0", "0.5", "--dry-run"]
    proc = sweep_main("ablation", argv)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip() and "trials" not in line]
    labels = [line.split(maxsplit=2)[2] for line in lines]
    # (2 taus + keep=last) x 2 kappas, for C first (the costlier model), then B
    assert labels == [
        "C base",
        "C kappa=0.5",
        "C tau=0.01",
        "C tau=0.01 kappa=0.5",
        "C keep=last",
        "C kappa=0.5 keep=last",
        "B base",
        "B kappa=0.5",
        "B tau=0.01",
        "B tau=0.01 kappa=0.5",
        "B keep=last",
        "B kappa=0.5 keep=last",
    ]
    assert proc.stdout.strip().endswith("12 trials")


def test_report_ranks_choices_by_their_effect(tmp_path: Path, sweep_env: dict[str, str]) -> None:
    """A one-choice-at-a-time sweep with known numbers, logged as the sweep driver logs it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("synthetic")
    base = {
        "tau": "0.05",
        "kappa": "0.0",
        "flow_loss": "eq4",
        "eq5_scale": "none",
        "keep": "best",
        "loss_input": "logits",
    }
    parent = client.create_run(
        exp_id, run_name="ablation-x", tags={"stadv.role": "parent", "stadv.sweep": "ablation"}
    )
    for k, v in base.items():
        client.log_param(parent.info.run_id, f"base.{k}", v)
    # (changed options, success of model A, success of model B)
    trials = [
        ({}, 1.0, 0.9),
        ({"loss_input": "softmax"}, 0.2, 0.3),  # -0.8 / -0.6
        ({"keep": "last"}, 0.8, 0.6),  # -0.2 / -0.3
        ({"flow_loss": "eq5"}, 0.9, 0.9),  # -0.1 / 0
        ({"flow_loss": "eq5", "eq5_scale": "n"}, 0.5, 0.5),  # vs eq5: -0.4 / -0.4
    ]
    for changed, *rates in trials:
        for model, rate in zip("AB", rates, strict=True):
            child = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id})
            for k, v in {
                **base,
                **changed,
                "model": model,
                "n_images": "10",
                "targets": "all",
            }.items():
                client.log_param(child.info.run_id, k, v)
            client.log_metric(child.info.run_id, "targeted_success_rate", rate)
            client.log_metric(child.info.run_id, "mean_flow_loss", 1.0)
            client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    out = tmp_path / "r.md"
    proc = run(
        sweep_cmd("results", "--tracking-uri", uri, "--experiment", "synthetic", "--out", str(out)),
        sweep_env,
        120,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "The most harmful choice is **loss_input=softmax**: success changes by -70.00%" in text
    ranked = [
        line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert ranked == ["loss_input=softmax", "eq5_scale=n", "keep=last", "flow_loss=eq5"]
    assert "| A | 0.9995 | 1 | 1 |" in text  # paper beside ours at the base setting and our best
    assert (tmp_path / "r_files" / "vs_loss_input.png").is_file()


def test_trials_that_cannot_fit_the_cluster_fail_fast(
    tmp_path: Path, ray_address: str, sweep_env: dict[str, str], sweep_store: Path, data_root: Path
) -> None:
    args = common_args(tmp_path, sweep_store, data_root, "nogpu")
    cmd = sweep_cmd(
        "kappa_tau", "--smoke-test", "--address", ray_address, "--gpus-per-trial", "1", *args
    )
    proc = run(cmd, sweep_env, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no trial fits the cluster: asked 1.0 CPU and 1.0 GPU per trial" in proc.stderr
    assert not (tmp_path / "ray").exists()  # no Tune run was started


def test_storage_path_uri_goes_to_tune_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stadv_sweeps.engine.tuning import tune_storage

    assert tune_storage("s3://bucket/path", "kappa_tau") == "s3://bucket/path/kappa_tau"
    assert tune_storage("gs://bucket/a/b/", "ablation") == "gs://bucket/a/b/ablation"
    monkeypatch.chdir(tmp_path)
    assert tune_storage("ray_results", "x") == str(tmp_path.resolve() / "ray_results" / "x")


# ---------------------------------------------------------------------------------------------
# The defense sweep
# ---------------------------------------------------------------------------------------------
DEFENSES = (
    "none",
    "fgsm",
    "ensemble",
    "pgd",
    "blur",
    "denoiser",
    "distillation",
    "pcl",
    "pcl-pgd",
    "vae",
)
ATTACKS = ("fgsm", "cw", "stadv", "deepfool", "jsma", "few-pixel")
LABELS = (
    "undefended",
    "FGSM-adv",
    "ensemble-adv",
    "PGD-adv",
    "blur",
    "denoiser",
    "distilled",
    "PCL",
    "PCL+PGD-adv",
    "VAE detector",
)
N_DEFENSE_TRIALS = len(DEFENSES) * len(ATTACKS)  # model B


@pytest.fixture(scope="module")
def defense_smoke(smoke_runner: Any) -> dict[str, Any]:
    """``defense_sweep.py --smoke-test`` once (training the smoke defenses into the session store)."""
    return smoke_runner("defense_sweep", "def-smoke")


@pytest.mark.slow
def test_defense_sweep_smoke_logs_the_table(defense_smoke: dict[str, Any], tmp_path: Path) -> None:
    proc = defense_smoke["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    n = N_DEFENSE_TRIALS
    assert f"{n}/{n} trials finished" in out
    assert "with Wilson 95 % intervals; clean acc = accuracy of the defended model" in out
    for label in LABELS:
        assert f" B {label:>12} " in out, label
    assert "could not be checked here" in out  # the paper's defense table, said plainly
    assert "DeepFool (untargeted)" in out and "Few-pixel DE" in out and "JSMA" in out
    assert " detect " in out and " / adaptive " in out and " / AUC " in out  # the VAE's row

    client, parents, children = runs_of(defense_smoke["uri"], defense_smoke["experiment"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["trials"] == str(n) and parent.data.params["preset"] == "smoke"
    assert parent.data.params["training.train_limit"] == "1000"
    assert len(children) == n
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    cells = {(c.data.params["attack"], c.data.params["defense"]) for c in children}
    assert cells == set(itertools.product(ATTACKS, DEFENSES))
    assert len({c.data.tags["stadv.trial_key"] for c in children}) == n
    accuracy: dict[str, set[float]] = {}
    for child in children:
        assert child.info.status == "FINISHED"
        params, metrics = child.data.params, child.data.metrics
        targeted = params["attack"] != "deepfool"  # DeepFool takes no targets
        assert params["model"] == "B"
        assert params["targets"] == ("random" if targeted else "untargeted")
        assert params["model_variant"] == "smoke" and params["eval_images"] == "2000"
        assert metrics["stats/attacks"] == 2.0  # 2 images, one random target each
        if targeted:
            rate = metrics["success"]
            assert metrics["success_ci_low"] <= rate <= metrics["success_ci_high"]
        else:
            rate = metrics["untargeted_success"]
            assert "success" not in metrics
        assert 0 <= metrics["clean_accuracy"] <= 1 and 0 < metrics["test_accuracy"] <= 1
        accuracy.setdefault(params["defense"], set()).add(metrics["test_accuracy"])
        if params["defense"] in ("fgsm", "ensemble", "pgd"):
            assert params["defense_variant"] == f"adv-{params['defense']}-smoke"
        if params["defense"] == "vae":
            assert params["detector_validation_images"] == "200"
            assert 0 <= metrics["detector_fpr_test"] <= 1
            adaptive = metrics["adaptive_success_rate"]
            assert math.isnan(adaptive) is (params["attack"] not in ("fgsm", "cw", "stadv"))
        else:
            assert "detection_rate" not in metrics
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        expected = {"attacks.parquet", "attacks.csv", "target_heatmap.png"}
        if targeted:
            expected.add("figure2_grid.png")
        if params["attack"] == "stadv":  # the smoke test's views: the stAdv column only
            expected |= {"flow_quiver.png", "views"}
        assert names == expected, (child.info.run_name, names)
        local = Path(
            client.download_artifacts(child.info.run_id, "", str(tmp_path / child.info.run_id))
        )
        assert is_png(local / "target_heatmap.png")
        assert not targeted or is_png(local / "figure2_grid.png")
        table = pd.read_parquet(local / "attacks.parquet")
        assert len(table) == 2
        assert (
            (table["target"] != table["label"]).all() if targeted else (table["target"] == -1).all()
        )
        assert table["success"].mean() == pytest.approx(rate)
    # one clean accuracy per defended model, whichever attack's run logged it
    assert all(len(v) == 1 for v in accuracy.values()), accuracy

    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent")))
    table = pd.read_csv(local / "defense_table.csv")
    assert len(table) == n and set(table["defense"]) == set(DEFENSES)
    assert set(table.loc[table["attack"] == "deepfool", "success_kind"]) == {"untargeted"}
    assert table.loc[table["defense"] == "vae", "roc_auc"].notna().any()
    assert ((table["ci_low"] <= table["success"]) & (table["success"] <= table["ci_high"])).all()
    for attack in ATTACKS:
        assert is_png(local / "figures" / f"success_{attack}.png"), attack
    assert "# Attacks against defenses" in (local / "report.md").read_text()
    for defense in DEFENSES:
        assert parent.data.metrics[f"test_accuracy.{defense}.B"] == accuracy[defense].pop()

    # the defended checkpoints record how they were trained
    sidecar = json.loads((defense_smoke["store"] / "mnist-B-adv-pgd-smoke.json").read_text())
    assert sidecar["extra"]["defense"] == "pgd" and sidecar["extra"]["train_images"] == 1000
    assert sidecar["extra"]["defense_params"]["steps"] == 3
    assert sidecar["extra"]["defense_params"]["alpha"] == 0.1


@pytest.mark.slow
def test_defense_sweep_cells_become_records(
    defense_smoke: dict[str, Any], kappa_tau_smoke: dict[str, Any], tmp_path: Path
) -> None:
    """``sweeps/results.py --record DIR``: one record per cell and per defended model, with the
    sweep's commit, n and Wilson interval, the detector's statistics and the training time."""
    from stadv.records import load_records
    from stadv_sweeps.plans.report_cli import main as results_main

    assert defense_smoke["proc"].returncode == 0
    folder = tmp_path / "records"
    argv = ["--tracking-uri", defense_smoke["uri"], "--experiment", defense_smoke["experiment"]]
    argv += ["--out", str(tmp_path / "report.md"), "--store", str(defense_smoke["store"])]
    assert results_main([*argv, "--record", str(folder), "--command", "the sweep as run"]) == 0
    recs = load_records(folder)
    cells = {k for k in recs if not k.startswith("clean/")}
    assert cells == {f"B-{d}-{a}" for d in DEFENSES for a in ATTACKS}
    assert {k for k in recs if k.startswith("clean/")} == {f"clean/B-{d}" for d in DEFENSES}
    _, parents, children = runs_of(defense_smoke["uri"], defense_smoke["experiment"])
    by_cell = {(c.data.params["defense"], c.data.params["attack"]): c for c in children}
    commit = parents[0].data.tags["git_commit"][:7]
    for (defense, attack), child in by_cell.items():
        rec = recs[f"B-{defense}-{attack}"]
        assert rec.command == "the sweep as run" and rec.commit.startswith(commit) and rec.n == 2
        kind = "success" if attack != "deepfool" else "untargeted_success"
        assert rec.rate == pytest.approx(child.data.metrics[kind])
        assert rec.ci_low is not None and rec.ci_low <= rec.rate <= (rec.ci_high or 0)
        assert rec.tags["targets"] == ("untargeted" if attack == "deepfool" else "targeted")
        assert rec.stats["test_accuracy"] == child.data.metrics["test_accuracy"]
        assert rec.stats["untargeted_success_rate"] == child.data.metrics["untargeted_success"]
        auc = child.data.metrics.get("roc_auc", math.nan)  # NaN when nothing succeeded
        assert ("roc_auc" in rec.stats) is (defense == "vae" and math.isfinite(auc))
        assert recs[f"clean/B-{defense}"].rate == pytest.approx(
            child.data.metrics["test_accuracy"], abs=1e-4
        )
    assert recs["clean/B-pgd"].n == 2000  # the smoke test's evaluation images
    assert recs["clean/B-pgd"].stats["train_seconds"] > 0  # from the checkpoint's sidecar
    assert "train_seconds" not in recs["clean/B-blur"].stats  # nothing trained
    # a sweep without defenses has no cells to record: an error naming it, nothing written
    other = [
        "--tracking-uri",
        kappa_tau_smoke["uri"],
        "--experiment",
        kappa_tau_smoke["experiment"],
    ]
    other += ["--out", str(tmp_path / "kt.md"), "--record", str(tmp_path / "none")]
    assert results_main(other) == 2
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defenses", "none", "bogus"], "unknown defense 'bogus'"),
        (["--attacks", "fgsm", "nonesuch"], "unknown attack 'nonesuch'"),
        (["--models", "A", "D"], "unknown model 'D'"),
        (["--pgd-steps", "0"], "pgd_steps must be >= 1, got 0"),
        (["--pgd-adv-weight", "1.5"], "pgd_adv_weight must be in [0, 1], got 1.5"),
        (["--cw-search-steps", "0"], "binary_search_steps"),
        (["--adv-train-limit", "ten"], "expected a whole number or 'all', got 'ten'"),
        (["--smoke-test", "--preset", "paper"], "--smoke-test and --preset paper exclude"),
    ],
)
def test_defense_sweep_bad_values_fail_before_anything_runs(
    extra: list[str], message: str, tmp_path: Path, sweep_main: SweepMain
) -> None:
    assert_fails_before_anything_runs("defense_sweep", extra, message, tmp_path, sweep_main)


def test_defense_sweep_dry_run_lists_every_combination(sweep_main: SweepMain) -> None:
    proc = sweep_main("defense_sweep", ["--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"{3 * N_DEFENSE_TRIALS} trials")
    labels = [line.split(maxsplit=2)[2] for line in proc.stdout.splitlines()[:-1]]
    assert labels[:3] == ["C undefended FGSM", "C undefended C&W", "C undefended stAdv"]
    assert labels[3:6] == [
        "C undefended DeepFool",
        "C undefended JSMA",
        "C undefended Few-pixel DE",
    ]
    assert labels[-1] == "B VAE detector Few-pixel DE"
    for label in ("distilled", "PCL", "PCL+PGD-adv", "VAE detector"):
        assert f"A {label} stAdv" in labels, label
    proc = sweep_main("defense_sweep", ["--dry-run", "--smoke-test"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"{N_DEFENSE_TRIALS} trials")
    argv = ["--dry-run", "--models", "B", "--defenses", "pgd", "--attacks", "stadv"]
    proc = sweep_main("defense_sweep", argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("B PGD-adv stAdv")


def test_defense_settings_name_their_checkpoints() -> None:
    from stadv_sweeps.engine import cli
    from stadv_sweeps.plans import defense_spec as spec_mod
    from stadv_sweeps.plans.defense import DefenseSweep

    plan = DefenseSweep("")
    parser = cli.new_parser("defenses", "")
    plan.add_arguments(parser)
    cli.add_run_arguments(parser, "defenses")

    default = plan.resolve(parser.parse_args([]))
    assert default.preset == "cpu" and default.n_images == 30 and default.targets == "random"
    assert default.settings.train_limit == 10_000 and default.settings.pgd_steps == 20
    assert default.settings.pgd_adv_weight == 0.5
    assert default.attack_options["fgsm"] == {"epsilon": 0.3}
    assert default.attack_options["stadv"] == {"tau": 0.05, "kappa": 0.0}
    assert spec_mod.variant("pgd", default.settings) == "adv-pgd-cpu"
    assert spec_mod.variant("denoiser", default.settings) == "cpu"
    # blur's parameters do not rename the adversarially trained models
    assert spec_mod.variant("fgsm", default.settings) == "adv-fgsm-cpu"

    paper = plan.resolve(parser.parse_args(["--preset", "paper"]))
    assert paper.settings.train_limit is None and paper.settings.pgd_steps == 40
    assert paper.settings.pgd_adv_weight == 1.0
    assert paper.n_images == 10_000 and paper.attack_options["cw"]["max_iterations"] == 10_000
    assert spec_mod.variant("pgd", paper.settings) == "adv-pgd"  # `stadv train --defense pgd`'s
    assert spec_mod.variant("denoiser", paper.settings) == ""

    custom = plan.resolve(parser.parse_args(["--adv-train-limit", "all", "--blur-sigma", "2"]))
    assert custom.settings.train_limit is None and custom.settings.epochs == 1
    pgd = spec_mod.variant("pgd", custom.settings)
    assert pgd.startswith("adv-pgd-t") and pgd != spec_mod.variant("pgd", paper.settings)
    assert spec_mod.variant("denoiser", custom.settings) == "cpu"  # unchanged by these options

    # the spec survives its JSON round trip (what --resume reads back)
    saved = json.loads(json.dumps(custom.to_json()))
    assert spec_mod.DefenseSpec.from_json(saved) == custom
    keys = [p.key for p in spec_mod.build_defense_points(custom)]
    assert keys == [
        p.key for p in spec_mod.build_defense_points(spec_mod.DefenseSpec.from_json(saved))
    ]


# --- how a sweep reads in MLflow's UI (stadv_sweeps.engine.views): fast, no Ray ---------------
def test_metric_names_round_trip_and_headline_names_stay_distinct() -> None:
    from stadv_sweeps.engine import views

    library = {"targeted_success_rate": 0.5, "seconds": 2.0, "custom": 1.0}
    logged = views.to_mlflow(library)
    assert logged == {"success": 0.5, "time/attack_s": 2.0, "custom": 1.0}
    assert views.from_mlflow(logged) == library
    # a narrow column header shows ~14 characters: the headline names differ within them
    assert len({name[:14] for name in views.HEADLINE}) == len(views.HEADLINE)
    assert all("/" not in name for name in views.HEADLINE)
    assert all("/" in name for name in views.MLFLOW_NAMES.values() if name not in views.HEADLINE)
    assert views.rounded(0.9444444444444444) == 0.9444444
    assert math.isnan(views.rounded(math.nan))


def test_runs_link_and_saved_view_state() -> None:
    from stadv_sweeps.engine import views

    key = views.view_key("abc")
    url = views.runs_url("sqlite:////tmp/x.db", "7", key)
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&viewStateShareKey=sweep-abc"
    )
    assert views.runs_url("http://host:5001/", "7").startswith("http://host:5001/#/experiments/7/")
    assert views.ui_command("sqlite:////tmp/x.db") == (
        "mlflow ui --backend-store-uri sqlite:////tmp/x.db --host 127.0.0.1 --port 5000"
    )
    state = views.runs_view_state("abc", params=["model", "kappa", "tau"])
    envelope = json.loads(views.view_envelope("kappa_tau sweep", state, now_ms=5))
    assert envelope["name"] == "kappa_tau sweep" and envelope["createdAt"] == 5
    inner = json.loads(envelope["state"])
    assert inner["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc'"
    assert inner["selectedColumns"][:4] == [
        "params.`model`",
        "params.`kappa`",
        "params.`tau`",
        "metrics.`success`",
    ]


def test_default_options_are_logged_as_the_values_used() -> None:
    from stadv.attack import StAdv
    from stadv.options import to_params
    from stadv_sweeps.engine.tracking import explicit_options, explicit_parent_params

    shown = explicit_options(StAdv(), to_params(StAdv()))
    assert "None" not in shown.values()
    assert shown["wolfe"] == "weak" and "device" not in shown  # the runtime's, not an option
    assert shown["stop"] == "first-success" and shown["polish"] == "50"
    assert (shown["hinge"], shown["hinge_width"], shown["hinge_shift"]) == (
        "softplus",
        "0.2",
        "0.1",
    )
    converged = StAdv(stop="converged")
    assert explicit_options(converged, to_params(converged))["polish"] == "0"
    assert (
        explicit_options(StAdv(solver="scipy"), to_params(StAdv(solver="scipy")))["wolfe"]
        == "strong"
    )
    parent = explicit_parent_params({"attack": "stadv", "base.wolfe": None, "base.tau": 0.05})
    assert parent["base.wolfe"] == "weak" and parent["base.tau"] == 0.05


def test_html_report_embeds_its_figures(tmp_path: Path) -> None:
    from stadv_sweeps.engine.report import report_html

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG_SIGNATURE + b"x" * 200)
    text = "# Title\n\n- one `x`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![a](figures/a.png)\n"
    html = report_html(text, tmp_path)
    assert "<h1>Title</h1>" in html and "<td>1</td>" in html and "<code>x</code>" in html
    assert 'src="data:image/png;base64,' in html


def test_figures_are_legible_and_plain(tmp_path: Path) -> None:
    """Every figure at 150 dpi is >= 1000 px wide, with no offset notation on its axes."""
    import torch
    from PIL import Image

    from stadv import plots
    from stadv.result import AttackResult
    from stadv_sweeps.engine.figures import figures

    n = 3
    labels = torch.tensor([1, 1, 4])
    result = AttackResult(
        adv_images=torch.rand(n, 1, 28, 28),
        labels=labels,
        predictions=torch.tensor([2, 0, 4]),
        success=torch.tensor([True, False, False]),
        targets=torch.tensor([2, 3, 5]),
        source_index=torch.tensor([0, 0, 2]),
        margin=torch.zeros(n),
        l2=torch.ones(n),
        linf=torch.ones(n),
        iterations=torch.ones(n, dtype=torch.long),
        evaluations=torch.ones(n, dtype=torch.long),
        seconds=1.0,
        flows=torch.randn(n, 2, 28, 28),
        flow_loss=torch.ones(n),
    )
    images = torch.rand(n, 1, 28, 28)
    grid = plots.figure2_grid(result, images, labels)
    assert len(grid.axes) == 2 * 10  # rows only for the classes present (1 and 4)
    df = pd.DataFrame(
        {
            "model": ["B"] * 4,
            "kappa": [0.0, 0.0, 0.5, 0.5],
            "tau": [0.05, 0.0, 0.05, 0.0],
            "targeted_success_rate": [0.9, 0.8, 0.9, 0.8],
            "targeted_success_ci_low": [0.8, 0.7, 0.8, 0.7],
            "targeted_success_ci_high": [0.95, 0.9, 0.95, 0.9],
            "attacks": [36.0] * 4,
            "mean_flow_loss": [1000.1, 1000.2, 1000.3, 1000.4],  # would need an offset
        }
    )
    made = {
        "grid": grid,
        "quiver": plots.flow_quiver(result, 0, images=images),
        "targets": plots.target_heatmap(result),
        **figures(df, {"kappa": 0.0, "tau": 0.05}),
    }
    assert {"vs_kappa.png", "vs_tau.png", "heatmap_kappa_tau_B.png"} <= set(made)
    for name, fig in made.items():
        path = plots.save_png(fig, tmp_path / f"{name}.png")
        with Image.open(path) as im:
            assert im.width >= 1000, (name, im.size)
        fig.canvas.draw()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert not axis.get_offset_text().get_text(), name
    vs = made["vs_kappa.png"].axes[0]
    assert vs.containers, "success plotted with error bars"
