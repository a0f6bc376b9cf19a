""".ci/cluster.sh signals only processes it can prove it started, and trusts only its own files.

Fast, no service started: each test writes a state folder by hand (PID records, ``cluster.env``)
the way an attacker, or a stale run, could have left it, and runs the script's ``stop`` (or
another subcommand) on it. Processes named in the records are ``sleep``s this test started.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / ".ci" / "cluster.sh"
SERVICES = ("ray-head", "ray-worker", "mlflow", "postgres")


def start_time(pid: int) -> str:
    """Field 22 of ``/proc/PID/stat``: the start time, in clock ticks since boot."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


def cmdline_sha256(pid: int) -> str:
    return hashlib.sha256(Path(f"/proc/{pid}/cmdline").read_bytes()).hexdigest()


def record(pid: int, *, start: str | None = None, cmdline: str | None = None) -> str:
    """A PID record as the script writes it; ``start``/``cmdline`` override the true values."""
    return (
        f"pid={pid}\nstart={start or start_time(pid)}\n"
        f"cmdline_sha256={cmdline or cmdline_sha256(pid)}\ncmdline=sleep\n"
    )


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@pytest.fixture()
def state() -> Iterator[Path]:
    """A private state folder (mode 700, ours), as ``mktemp -d`` makes it."""
    path = Path(tempfile.mkdtemp(prefix="stadv-cl-test."))
    (path / "pids").mkdir()
    yield path
    os.chmod(path, 0o700)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this test's own, in a session of its own as the script's services are."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def run_script(state: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STADV_CLUSTER_STATE"}
    env["STADV_PYTHON"] = sys.executable
    if state is not None:
        env["STADV_CLUSTER_STATE"] = str(state)
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stop_refuses_every_record_it_cannot_prove(
    state: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid = sleeper.pid
    pids = state / "pids"
    (pids / "ray-head").write_text(f"{pid}\n")  # a bare PID, as the old script wrote it
    (pids / "ray-worker").write_text(record(pid, start="1"))  # another start time
    (pids / "mlflow").write_text(record(pid, cmdline="0" * 64))  # another command line
    (pids / "postgres").write_text(record(1))  # init, with its true start and command line
    out = run_script(state, "stop")
    assert out.returncode != 0
    assert alive(sleeper), out.stderr
    log = out.stderr
    assert "refused to signal 4 recorded process(es)" in log, log
    assert f"ray-head: pid {pid} has no start time and command line on record" in log
    assert f"ray-worker: pid {pid} started at tick" in log
    assert f"mlflow: pid {pid} runs another command line" in log
    assert "postgres: will not signal pid '1'" in log
    assert "stopping" not in log


def test_stop_refuses_its_own_ancestors(state: Path) -> None:
    # This test process is an ancestor of the script: true start time and command line.
    (state / "pids" / "mlflow").write_text(record(os.getpid()))
    out = run_script(state, "stop")
    assert out.returncode != 0
    assert f"pid {os.getpid()} is this script or one of its ancestors" in out.stderr


def test_stop_does_stop_a_process_it_can_prove(
    state: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The control: the same record with the true start time and command line is honoured."""
    (state / "pids" / "ray-worker").write_text(record(sleeper.pid))
    out = run_script(state, "stop")
    assert out.returncode == 0, out.stderr
    assert sleeper.wait(timeout=30) == -15  # SIGTERM, to its process group
    assert not (state / "pids").exists()


@pytest.mark.parametrize("problem", ["world-writable", "group-writable", "foreign owner"])
def test_a_state_folder_others_can_write_is_refused(
    state: Path, sleeper: subprocess.Popen[bytes], problem: str
) -> None:
    # A perfect record: what decides is the folder it lies in.
    (state / "pids" / "ray-worker").write_text(record(sleeper.pid))
    if problem == "world-writable":
        os.chmod(state, 0o777)
    elif problem == "group-writable":
        os.chmod(state, 0o770)
    elif os.geteuid() == 0:
        os.chown(state, 65534, 65534)  # nobody
    else:
        state = Path("/usr")  # owned by root, not by us
    for command in ("stop", "env", "worker-stop"):
        out = run_script(state, command)
        assert out.returncode != 0
        assert "refusing state folder" in out.stderr, out.stderr
    assert alive(sleeper)


def test_a_symlinked_state_folder_is_refused(state: Path, sleeper: subprocess.Popen[bytes]) -> None:
    (state / "pids" / "ray-worker").write_text(record(sleeper.pid))
    link = state.with_name(state.name + ".link")
    link.symlink_to(state)
    try:
        out = run_script(link, "stop")
    finally:
        link.unlink()
    assert out.returncode != 0 and "symbolic link" in out.stderr
    assert alive(sleeper)


def test_without_a_state_folder_stop_touches_nothing() -> None:
    """No fallback to a fixed folder under /tmp that anyone could have created."""
    out = run_script(None, "stop")
    assert out.returncode != 0
    assert "STADV_CLUSTER_STATE is not set" in out.stderr


@pytest.mark.parametrize(
    "line",
    [
        "STADV_CLUSTER_PYTHON=$(touch {marker})",
        "STADV_CLUSTER_PYTHON=`touch {marker}`",
        "RAY_AUTH_TOKEN=x;touch {marker}",
        "RAY_AUTH_TOKEN=x\\ $(touch {marker})",
        "PATH=/nowhere",  # not a key of the file
        "BASH_ENV={marker}",
    ],
)
def test_cluster_env_is_read_as_data_never_run(state: Path, line: str, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    env_file = state / "cluster.env"
    env_file.write_text("STADV_RAY_WORKER_PID=''\n" + line.format(marker=marker) + "\n")
    env_file.chmod(0o600)
    for command in ("env", "worker-stop", "stop"):
        out = run_script(state, command)
        assert out.returncode != 0, out.stdout
        assert f"refusing {env_file}" in out.stderr, out.stderr
    assert not marker.exists()


def test_cluster_env_values_round_trip_as_printf_q_writes_them(state: Path) -> None:
    env_file = state / "cluster.env"
    env_file.write_text(
        "STADV_CLUSTER_PYTHON=/opt/my\\ env/bin/python\nRAY_AUTH_TOKEN=''\n"
        "STADV_PG_URI=postgresql+psycopg2://u:abc123@127.0.0.1:5432/mlflow\n"
    )
    env_file.chmod(0o600)
    out = run_script(state, "env")
    assert out.returncode == 0, out.stderr
    env_file.chmod(0o644)  # readable by others: it holds secrets
    out = run_script(state, "env")
    assert out.returncode != 0 and "readable or writable by others" in out.stderr


def test_no_secret_is_put_on_a_command_line() -> None:
    """/proc/PID/cmdline is world-readable: secrets go through the environment or files."""
    text = CLUSTER_SH.read_text()
    assert "--backend-store-uri" not in text  # MLflow gets MLFLOW_BACKEND_STORE_URI instead
    assert "MLFLOW_BACKEND_STORE_URI=$STADV_PG_URI" in text
    assert "Authorization: Bearer $" not in text  # no token in curl's arguments
    assert "--app-name basic-auth" in text
    assert "source " not in text and "\n  . " not in text  # cluster.env is parsed, not sourced
