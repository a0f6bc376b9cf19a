"""The cluster deployment, end to end.

* ``docker-compose.yml`` (and its CPU-only override) validate against the Compose
  Specification's JSON schema, and with ``docker compose config`` where the Compose plugin
  exists; their security-relevant settings are checked one by one.
* The smoke sweep, submitted with ``ray job submit`` to a real two-node Ray cluster (token
  auth on), lands in an MLflow server backed by PostgreSQL with served artifacts: the parent
  run, every child run, their metrics and artifacts (a PNG downloaded back).
* The same sweep on one node, for the wall-time comparison.
* The extra worker's raylet killed mid-sweep: the sweep completes on the head, no finished
  trial is lost, the interrupted trial is retried.

The cluster tests need the services of ``.ci/cluster.sh start``; they skip unless
``$STADV_CLUSTER_STATE/cluster.env`` exists (``.ci/run`` starts the cluster and sets it).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COMPOSE_SCHEMA = SHARED / "schemas" / "compose-spec.json"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
CLUSTER_SH = REPO / ".ci" / "cluster.sh"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUBMIT_TIMEOUT_S = 600


# ---------------------------------------------------------------------------------------------
# The compose files (no cluster needed)
# ---------------------------------------------------------------------------------------------
class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: ``!reset`` and ``!override`` carry their plain value."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _tagged)
ComposeLoader.add_constructor("!override", _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict), f"{path.name} must hold a mapping"
    return data


def example_env() -> dict[str, str]:
    """``.env.example`` with every empty value (the secrets) filled with a dummy."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip() or f"dummy-{key.strip().lower()}"
    return env


def test_compose_files_validate_against_the_compose_spec() -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    for path in (COMPOSE, COMPOSE_CPU):
        validator.validate(load_compose(path))
    # The validator really rejects what the spec forbids (the check above can fail).
    broken = load_compose(COMPOSE)
    broken["services"]["ray-head"]["shm_size"] = {"not": "a size"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_compose_services_are_wired_as_documented() -> None:
    compose = load_compose(COMPOSE)
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "s3", "s3-init"} <= set(services)
    head, worker, mlflow, postgres = (
        services["ray-head"],
        services["ray-worker"],
        services["mlflow"],
        services["postgres"],
    )
    # Ray: the project image built from docker/Dockerfile, a blocking `ray start`, room for
    # the object store, token auth from .env, the shared storage at one path on every node.
    for node, role in ((head, "head"), (worker, "worker")):
        assert node["build"]["dockerfile"] == "docker/Dockerfile"
        assert node["build"]["args"]["RAY_VERSION"] == "2.60.0"
        assert _command(node).split() == ["ray-node", role]
        assert node["shm_size"]
        env = _environment(node)
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "shared:/shared" in node["volumes"]
    assert "container_name" not in worker and "ports" not in worker  # scalable
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    # Published ports: loopback only.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
    assert any(":8265" in str(p) for p in head["ports"])
    # MLflow on PostgreSQL, artifacts in the object store, Host headers clients use allowed.
    mlflow_env = _environment(mlflow)
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    cmd = _command(mlflow)
    allowed = cmd.split("--allowed-hosts", 1)[1].split()[0].split(",")
    assert {"mlflow", "mlflow:*", "localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"} <= set(
        allowed
    )
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["s3-init"]["restart"] == "no"
    assert mlflow["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    assert postgres["healthcheck"]["test"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert {"pgdata", "s3data", "shared"} <= set(compose["volumes"])


def test_compose_holds_no_secret_and_env_example_holds_none_either() -> None:
    text = COMPOSE.read_text() + COMPOSE_CPU.read_text()
    for name, service in load_compose(COMPOSE)["services"].items():
        for key, value in _environment(service).items():
            if key.endswith("_FILE"):  # where a program finds a Docker secret
                assert value.startswith("/run/secrets/"), f"{name}.{key}: {value}"
            elif re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", key):
                assert value.startswith("${"), f"{name}.{key} is set in the file, not from .env"
            if "://" in value and "@" in value:  # credentials inside a URI
                # A password there, if any, only ever from .env (the URIs here carry none).
                userinfo = re.sub(r"\$\{[^}]*\}", "${}", value.split("://", 1)[1].split("@")[0])
                if ":" in userinfo:
                    assert userinfo.split(":", 1)[1] == "${}", f"{name}.{key} embeds a password"
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    for key in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "S3_SECRET_KEY"):
        assert example[key] == "", f".env.example must leave {key} empty"
    for key, value in example.items():
        if value and len(value) >= 12:
            assert value not in text, f"the value of {key} is written into the compose files"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO, capture_output=True, check=False
    )
    assert ignored.returncode == 0, ".env must be git-ignored"


# The secrets of .env: each reaches the services as a Docker secret (a file), never through
# `environment:` (which `docker inspect` shows); the Ray token is the one exception, since
# Ray's nodes read it from their environment.
ENV_SECRETS = {
    "POSTGRES_PASSWORD": "postgres_password",
    "S3_ACCESS_KEY": "s3_access_key",
    "S3_SECRET_KEY": "s3_secret_key",
    "MLFLOW_ADMIN_PASSWORD": "mlflow_admin_password",
    "MLFLOW_FLASK_SECRET_KEY": "mlflow_flask_secret_key",
    "MLFLOW_TRACKING_PASSWORD": "mlflow_tracking_password",
}


def _secrets(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def _networks(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks", [])
    return set(nets) if isinstance(nets, list) else set(nets.keys())


def test_compose_secrets_are_files_and_reach_only_who_needs_them() -> None:
    compose = load_compose(COMPOSE)
    services = compose["services"]
    assert {k: v["environment"] for k, v in compose["secrets"].items()} == {
        v: k for k, v in ENV_SECRETS.items()
    }
    example = ENV_EXAMPLE.read_text()
    for key in ENV_SECRETS:
        assert re.search(rf"^{key}=", example, re.M), f".env.example has no {key}"
        if key != "S3_ACCESS_KEY":  # a name, not a secret of its own
            assert re.search(rf"^{key}=$", example, re.M), f".env.example must leave {key} empty"
    for name, service in services.items():
        for key, value in _environment(service).items():
            for secret in ENV_SECRETS:
                assert "${" + secret not in value, (
                    f"{name}.{key} passes {secret} in its environment"
                )
        assert "${" not in _command(service).replace("$${", ""), (
            f"{name}: a variable in its command"
        )
    who = {secret: {n for n, s in services.items() if secret in _secrets(s)} for secret in
           ENV_SECRETS.values()}  # fmt: skip
    assert who["postgres_password"] == {"postgres", "mlflow"}
    assert who["s3_access_key"] == who["s3_secret_key"] == {"s3", "s3-init", "mlflow"}
    assert who["mlflow_admin_password"] == {"mlflow", "mlflow-init"}
    assert who["mlflow_flask_secret_key"] == {"mlflow"}
    assert who["mlflow_tracking_password"] == {"ray-head", "ray-worker", "mlflow-init"}
    # PostgreSQL reads its password from the file; MLflow's backend URI carries none.
    assert _environment(services["postgres"])["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password"
    )
    uri = _environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert ":" not in re.sub(r"\$\{[^}]*\}", "", uri.split("://", 1)[1].split("@")[0])
    # MLflow behind its basic-auth app; the Ray nodes log in as the (non-admin) sweep user.
    assert "--app-name basic-auth" in _command(services["mlflow"])
    assert services["mlflow"]["entrypoint"] == ["mlflow-secrets"]
    for role in ("ray-head", "ray-worker"):
        env = _environment(services[role])
        assert env["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_TRACKING_USERNAME")
        assert not any(k.startswith("AWS_") or k.startswith("S3_") for k in env), env
    assert services["ray-head"]["depends_on"]["mlflow-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_networks_keep_the_ray_nodes_off_the_stores() -> None:
    compose = load_compose(COMPOSE)
    services = compose["services"]
    assert compose["networks"]["backend"]["internal"] is True
    assert not (compose["networks"].get("ray") or {}).get("internal")
    expected = {
        "ray-head": {"ray"},
        "ray-worker": {"ray"},
        "mlflow": {"ray", "backend"},
        "postgres": {"backend"},
        "s3": {"backend"},
        "s3-init": {"backend"},
        "mlflow-init": {"backend"},
    }
    assert {n: _networks(s) for n, s in services.items()} == expected
    # Only MLflow shares a network with the Ray nodes: PostgreSQL and SeaweedFS's master
    # (9333), volume (8080), filer (8888) and S3 (8333) ports are out of their reach.
    for name, service in services.items():
        if _networks(service) & {"ray"}:
            assert name in {"ray-head", "ray-worker", "mlflow"}
        if name in {"postgres", "s3"}:
            assert "ports" not in service and "ray" not in _networks(service)


def _check_hardened(name: str, service: dict[str, Any]) -> None:
    assert "no-new-privileges:true" in service.get("security_opt", []), name
    assert service.get("cap_drop") == ["ALL"], name
    caps = set(service.get("cap_add", []))
    assert caps <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}, name
    assert not caps or name in {"postgres", "s3"}, name
    assert service.get("mem_limit"), f"{name} has no memory limit"
    assert not service.get("privileged"), name


def test_compose_services_are_hardened_and_images_pinned() -> None:
    for name, service in load_compose(COMPOSE)["services"].items():
        _check_hardened(name, service)
        if "build" not in service:  # pulled, not built: pinned by digest, tag named
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", service["image"]), (
                f"{name}: {service['image']} is not pinned by digest"
            )
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    installs = re.findall(r'"([A-Za-z0-9_.\-\[\],]+)([=<>!~]=?[^"]*)"', dockerfile)
    assert installs, "no pinned requirement found in docker/Dockerfile"
    for name, spec in installs:
        assert re.fullmatch(r"==[\w.${}]+", spec), f"{name}{spec}: not an exact version"
    assert "${RAY_BASE_DIGEST}" in dockerfile
    for helper in ("ray-node.sh", "mlflow-secrets.sh", "mlflow-auth.ini", "mlflow_users.py"):
        assert f"!docker/{helper}" in (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    auth = (REPO / "docker" / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in auth and "admin_password" not in auth
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert "chmod 600 .env" in docs or "umask 077" in docs


def test_kuberay_pods_run_restricted() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rayjob.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert ctx["runAsNonRoot"] is True
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            env = {e["name"]: e for e in container["env"]}
            assert "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]
            assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]


def test_cpu_override_drops_the_gpu_reservation() -> None:
    override = load_compose(COMPOSE_CPU)
    worker = override["services"]["ray-worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == []
    assert "!reset" in COMPOSE_CPU.read_text()
    for name in ("ray-head", "ray-worker", "mlflow", "s3-init"):
        assert override["services"][name]["build"]["args"]["RAY_IMAGE_VARIANT"] == "cpu"


def test_kuberay_rayjob_runs_the_sweep_with_token_auth_and_shared_storage() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rayjob.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    argv = spec["entrypoint"].split()
    assert argv[:2] == ["python", "/home/ray/stadv/sweeps/kappa_tau.py"]
    assert argv[argv.index("--storage-path") + 1].startswith("/shared/")
    assert argv[argv.index("--address") + 1] == "auto"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"]["mode"] == "token"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}  # fmt: skip
        assert claims == {pvc["metadata"]["name"]}
        (container,) = pod["containers"]
        assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
    gpu_limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"]
                  for g in cluster["workerGroupSpecs"]]  # fmt: skip
    assert all(int(lim["nvidia.com/gpu"]) >= 1 for lim in gpu_limits)


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


# .ci/run installs the plugin and sets STADV_REQUIRE_DOCKER_COMPOSE: there it never skips.
@pytest.mark.skipif(
    not _docker_compose_available() and not os.environ.get("STADV_REQUIRE_DOCKER_COMPOSE"),
    reason="the Docker Compose v2 plugin is not installed (`docker compose version` fails); "
    "the schema test above still validates the files",
)
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_docker_compose_config_accepts_the_files(files: list[Path], tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    cmd = ["docker", "compose", "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    out = subprocess.run(
        [*cmd, "config", "--format", "json"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    devices = resolved["services"]["ray-worker"]["deploy"]["resources"]["reservations"].get(
        "devices", []
    )
    assert (devices == []) == (COMPOSE_CPU in files)
    # What Compose resolves (anchors merged, the override applied) is still hardened.
    for name, service in resolved["services"].items():
        _check_hardened(name, service)
    # Without the secrets, Compose refuses to start.
    bare = subprocess.run(
        [*cmd[:2], "--env-file", os.devnull, "-f", str(COMPOSE), "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"},
    )
    assert bare.returncode != 0
    # Compose names the first required variable it meets, in no fixed order.
    missing = re.search(r"required variable (\w+) is missing a value", bare.stderr)
    assert missing, bare.stderr
    secrets = {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
    assert missing.group(1) in secrets, bare.stderr


# ---------------------------------------------------------------------------------------------
# The live cluster (.ci/cluster.sh start)
# ---------------------------------------------------------------------------------------------
def _state_dir() -> Path | None:
    state = os.environ.get("STADV_CLUSTER_STATE")
    if not state or not (Path(state) / "cluster.env").is_file():
        return None
    return Path(state)


needs_cluster = pytest.mark.skipif(
    _state_dir() is None,
    reason="no cluster: run `.ci/cluster.sh start` and set STADV_CLUSTER_STATE to its state "
    "directory (default /tmp/stadv-cluster); .ci/run does both",
)


def read_env(state: Path) -> dict[str, str]:
    """``cluster.env``: KEY=value lines, the values shell-quoted by ``printf %q``."""
    env = {}
    for line in (state / "cluster.env").read_text().splitlines():
        key, _, raw = line.partition("=")
        parts = shlex.split(raw)
        env[key] = parts[0] if parts else ""
    return env


@dataclass(frozen=True)
class Cluster:
    state: Path

    @property
    def env(self) -> dict[str, str]:
        return read_env(self.state)  # re-read: worker-start records a new PID

    def __getitem__(self, key: str) -> str:
        return self.env[key]

    @property
    def python(self) -> str:
        return self["STADV_CLUSTER_PYTHON"]

    @property
    def shared(self) -> Path:
        return Path(self["STADV_SHARED_DIR"])

    def client_env(self) -> dict[str, str]:
        """The submitting client's environment: Ray's token, token mode on."""
        env = dict(os.environ)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self["RAY_AUTH_TOKEN"]
        return env

    def api(self, path: str) -> Any:
        req = urllib.request.Request(
            self["STADV_RAY_DASHBOARD"] + path,
            headers={"Authorization": f"Bearer {self['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def nodes(self) -> list[dict[str, Any]]:
        summary = self.api("/nodes?view=summary")["data"]["summary"]
        return [n["raylet"] for n in summary if n["raylet"]["state"] == "ALIVE"]

    def script(self, *args: str) -> None:
        env = {**os.environ, "STADV_CLUSTER_STATE": str(self.state)}
        out = subprocess.run(
            ["bash", str(CLUSTER_SH), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{out.stderr[-3000:]}"

    def ensure_nodes(self, n: int) -> None:
        if len(self.nodes()) < n:
            self.script("worker-start")
        assert len(self.nodes()) == n


@pytest.fixture(scope="module")
def cluster(data_source: Path) -> Iterator[Cluster]:
    state = _state_dir()
    assert state is not None
    c = Cluster(state)
    with urllib.request.urlopen(c["STADV_MLFLOW_URI"] + "/health", timeout=30) as resp:
        assert resp.status == 200
    # The data on the head, once: the sweep reads it on the driver, nothing downloads.
    from stadv.data import ensure_data

    ensure_data("mnist", data_dir=c.shared / "data", source_dir=data_source, download=False)
    # The tracking server wants a user: the sweep user's, as the Ray nodes have it in their
    # environment (`.ci/cluster.sh run` exports it too; MLflow's client reads it from there).
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            if c.env.get(key):
                mp.setenv(key, c[key])
        yield c


@pytest.fixture(scope="module")
def timings() -> dict[str, dict[str, float]]:
    return {}


@dataclass(frozen=True)
class Submitted:
    submission_id: str
    experiment: str
    output: str
    client_seconds: float


def submit(cluster: Cluster, label: str, *extra: str, wait: bool = True) -> Submitted:
    """``ray job submit`` of the smoke sweep, as the README tells users to run it."""
    experiment = f"e2e-{label}-{uuid.uuid4().hex[:8]}"
    sid = f"stadv-{experiment}"
    shared = cluster.shared
    ray = str(Path(cluster.python).parent / "ray")
    cmd = [
        ray, "job", "submit",
        "--address", cluster["STADV_RAY_DASHBOARD"],
        "--working-dir", str(REPO),
        "--submission-id", sid,
        *([] if wait else ["--no-wait"]),
        "--",
        cluster.python, "sweeps/kappa_tau.py", "--smoke-test",
        "--tracking-uri", cluster["STADV_MLFLOW_URI"],
        "--address", "auto",
        "--storage-path", str(shared / "ray_results"),
        "--store", str(shared / "store"),
        "--data-dir", str(shared / "data"),
        "--experiment-name", experiment,
        *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(
        cmd,
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT_S,
        check=False,
    )
    seconds = time.perf_counter() - t0
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"ray job submit failed ({out.returncode}):\n{output[-4000:]}"
    return Submitted(sid, experiment, output, seconds)


def job_info(cluster: Cluster, sid: str) -> dict[str, Any]:
    info = cluster.api(f"/api/jobs/{sid}")
    assert isinstance(info, dict)
    return info


def job_logs(cluster: Cluster, sid: str) -> str:
    return str(cluster.api(f"/api/jobs/{sid}/logs")["logs"])


def wait_job(cluster: Cluster, sid: str, timeout: float = SUBMIT_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(cluster, sid)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return info
        time.sleep(1)
    raise AssertionError(f"job {sid} still {info['status']} after {timeout} s")


@dataclass(frozen=True)
class SweepRuns:
    experiment_id: str
    parent: Any
    children: dict[str, Any]  # trial key -> the FINISHED child run


def mlflow_client(cluster: Cluster) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(cluster["STADV_MLFLOW_URI"])


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=1000,
        )
    )


def find_parent(client: Any, experiment: str) -> tuple[str, Any]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} is not in the tracking server"
    parents = client.search_runs(
        [exp.experiment_id], filter_string="tags.`stadv.role` = 'parent'", max_results=10
    )
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    return str(exp.experiment_id), parents[0]


def check_sweep(cluster: Cluster, experiment: str, tmp_path: Path) -> SweepRuns:
    """Every trial's run, metrics and artifacts are in the PostgreSQL-backed server."""
    client = mlflow_client(cluster)
    exp_id, parent = find_parent(client, experiment)
    assert parent.info.status == "FINISHED"
    n_trials = int(parent.data.params["trials"])
    assert n_trials >= 4
    runs = child_runs(client, exp_id, parent.info.run_id)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = {r.data.tags["stadv.trial_key"] for r in finished}
    assert len(finished) == len(keys) == n_trials, (
        f"{len(finished)} finished child runs for {len(keys)} trial keys; the parent says "
        f"{n_trials} trials ({[(r.info.run_name, r.info.status) for r in runs]})"
    )
    artifacts_root = Path(cluster["STADV_MLFLOW_ARTIFACTS"])
    for run in finished:
        metrics = run.data.metrics
        assert 0.0 <= metrics["clean_accuracy"] <= 1.0, f"{run.info.run_name}: {metrics}"
        assert math.isfinite(metrics["mean_flow_loss"])
        assert run.data.params["model"] == "B"
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        pngs = sorted(n for n in names if n.endswith(".png"))
        assert pngs and "attacks.csv" in names, f"{run.info.run_name} artifacts: {names}"
        # Served artifacts: the client never saw the store; the server wrote it.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        stored = artifacts_root / exp_id / run.info.run_id / "artifacts" / pngs[0]
        assert stored.is_file(), f"{stored} is not in the server's artifact store"
    first = finished[0]
    png = Path(client.download_artifacts(first.info.run_id, pngs[0], str(tmp_path)))
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    # The runs are rows of the PostgreSQL database the server runs on.
    import psycopg2

    dsn = cluster["STADV_PG_URI"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT run_uuid FROM runs WHERE experiment_id = %s AND lifecycle_stage = 'active' "
            "AND status = 'FINISHED'",
            (int(exp_id),),
        )
        rows = {r[0] for r in cur.fetchall()}
    assert rows == {parent.info.run_id, *(r.info.run_id for r in finished)}
    return SweepRuns(exp_id, parent, {r.data.tags["stadv.trial_key"]: r for r in finished})


def trial_nodes(cluster: Cluster, job_id: str, runs: list[Any]) -> dict[str, str]:
    """Run ID -> ID of the Ray node whose Tune trial actor (matched by PID) logged it."""
    actors = cluster.api("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
    node_of_pid = {
        str(a["pid"]): a["node_id"]
        for a in actors
        if a["job_id"] == job_id and a["class_name"].endswith("ImplicitFunc")
    }
    return {r.info.run_id: node_of_pid.get(r.data.tags.get("pid", ""), "?") for r in runs}


def record(
    cluster: Cluster,
    timings: dict[str, dict[str, float]],
    key: str,
    sub: Submitted,
    runs: SweepRuns,
) -> None:
    """Check every trial ran in a Tune actor on a cluster node; keep the timings."""
    info = job_info(cluster, sub.submission_id)
    nodes = trial_nodes(cluster, info["job_id"], list(runs.children.values()))
    alive = {n["nodeId"] for n in cluster.nodes()}
    assert set(nodes.values()) <= alive, f"trials on unknown nodes: {nodes}"
    timings[key] = {
        "nodes": float(len(alive)),
        "nodes_used": float(len(set(nodes.values()))),
        "client_seconds": sub.client_seconds,
        "job_seconds": (info["end_time"] - info["start_time"]) / 1000.0,
        # The sweep's own wall time (model training excluded), logged on its parent run.
        "sweep_seconds": float(runs.parent.data.metrics.get("time/sweep_s", math.nan)),
    }


def _mlflow_call(
    cluster: Cluster, path: str, login: tuple[str, str] | None, body: Any = None
) -> tuple[int, Any]:
    """HTTP status and JSON answer of MLflow's REST API, with a basic-auth login or none."""
    headers = {"Content-Type": "application/json"}
    if login is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cluster["STADV_MLFLOW_URI"] + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), json.load(resp)
    except urllib.error.HTTPError as err:
        return int(err.code), None


@needs_cluster
@pytest.mark.cluster
def test_mlflow_wants_a_user_and_no_secret_is_on_a_command_line(cluster: Cluster) -> None:
    env = cluster.env
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    user = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    admin = (env["STADV_MLFLOW_ADMIN_USERNAME"], env["STADV_MLFLOW_ADMIN_PASSWORD"])
    assert _mlflow_call(cluster, search, None)[0] == 401
    assert _mlflow_call(cluster, search, (user[0], "wrong-" + user[1]))[0] == 401
    assert _mlflow_call(cluster, search, user)[0] == 200
    # The sweep user is no admin: it may not create users; the admin may.
    status, me = _mlflow_call(cluster, "/api/2.0/mlflow/users/current", user)
    assert status == 200 and me["user"]["username"] == user[0]
    assert me["user"]["is_admin"] is False
    status, me = _mlflow_call(cluster, "/api/2.0/mlflow/users/current", admin)
    assert status == 200 and me["user"]["is_admin"] is True
    intruder = {"username": f"intruder-{uuid.uuid4().hex[:6]}", "password": uuid.uuid4().hex}
    assert _mlflow_call(cluster, "/api/2.0/mlflow/users/create", user, intruder)[0] == 403
    # /proc/PID/cmdline is world-readable: no secret of the cluster's on any command line.
    secrets = {
        "the Ray token": env["RAY_AUTH_TOKEN"],
        "the PostgreSQL password": urllib.parse.urlsplit(env["STADV_PG_URI"]).password or "",
        "the sweep user's MLflow password": user[1],
        "the MLflow admin password": admin[1],
    }
    assert all(len(v) >= 16 for v in secrets.values())
    seen = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        seen += 1
        for name, value in secrets.items():
            assert value.encode() not in cmdline, (
                f"{name} is on the command line of pid {proc.name}"
            )
    assert seen > 10


@needs_cluster
@pytest.mark.cluster
@pytest.mark.slow
def test_smoke_sweep_on_two_nodes_lands_in_the_postgres_backed_server(
    cluster: Cluster, timings: dict[str, dict[str, float]], tmp_path: Path
) -> None:
    cluster.ensure_nodes(2)
    sub = submit(cluster, "2nodes")
    assert "succeeded" in sub.output
    runs = check_sweep(cluster, sub.experiment, tmp_path)
    assert "2 at a time" in sub.output  # the driver saw both nodes' CPUs
    # Tune's state went to the shared storage path.
    assert list((cluster.shared / "ray_results" / sub.experiment).glob("*/experiment_state-*"))
    record(cluster, timings, "2 nodes", sub, runs)


@needs_cluster
@pytest.mark.cluster
@pytest.mark.slow
def test_smoke_sweep_on_one_node_and_the_timing(
    cluster: Cluster,
    timings: dict[str, dict[str, float]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.script("worker-stop")
    try:
        assert len(cluster.nodes()) == 1
        sub = submit(cluster, "1node")
        runs = check_sweep(cluster, sub.experiment, tmp_path)
        assert "1 at a time" in sub.output
        record(cluster, timings, "1 node", sub, runs)
    finally:
        cluster.script("worker-start")
    lines = ["smoke sweep wall time (s): ray job submit (client), the job, the sweep's own"]
    for key, row in timings.items():
        lines.append(
            f"  {key:8} client {row['client_seconds']:6.1f}  job {row['job_seconds']:6.1f}  "
            f"sweep {row['sweep_seconds']:5.0f}  (trials ran on {row['nodes_used']:.0f} node(s))"
        )
    (cluster.state / "timings.json").write_text(json.dumps(timings, indent=1))
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def _raylet_of(ray_start_pid: int) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == ray_start_pid and comm == "raylet":
            return int(proc.name)
    raise AssertionError(f"no raylet under the worker node's `ray start` (pid {ray_start_pid})")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


@pytest.fixture()
def restore_worker(cluster: Cluster) -> Iterator[None]:
    yield
    cluster.script("worker-start")


@needs_cluster
@pytest.mark.cluster
@pytest.mark.slow
def test_killing_the_worker_mid_sweep_loses_no_finished_trial(
    cluster: Cluster, restore_worker: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.ensure_nodes(2)
    worker_pid = int(cluster["STADV_RAY_WORKER_PID"])
    raylet = _raylet_of(worker_pid)
    # More and longer trials than the smoke default (10, of a few seconds each, two at a
    # time), so the kill lands mid-sweep: after a trial has finished, while another runs on
    # the worker node (smoke trials end before a worker-node actor has even started).
    grid = ["--tau", "0.05", "0.01", "0.005", "0.001", "0"]
    longer = ["--n-images", "8", "--max-iterations", "100"]
    sub = submit(cluster, "kill", *grid, *longer, wait=False)
    client = mlflow_client(cluster)
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    finished_before: dict[str, str] = {}
    interrupted = None
    while time.monotonic() < deadline:
        status = job_info(cluster, sub.submission_id)["status"]
        assert status in ("PENDING", "RUNNING"), (
            f"the job ended ({status}) before the kill:\n{job_logs(cluster, sub.submission_id)}"
        )
        exp = client.get_experiment_by_name(sub.experiment)
        if exp is not None:
            parents = client.search_runs(
                [exp.experiment_id], filter_string="tags.`stadv.role` = 'parent'"
            )
            runs = child_runs(client, exp.experiment_id, parents[0].info.run_id) if parents else []
            done = {r.data.tags["stadv.trial_key"]: r.info.run_id for r in runs
                    if r.info.status == "FINISHED"}  # fmt: skip
            on_worker = [
                r for r in runs
                if r.info.status == "RUNNING"
                and _parent_pid(int(r.data.tags.get("pid", "0"))) == raylet
            ]  # fmt: skip
            if done and on_worker:
                os.kill(raylet, signal.SIGKILL)
                finished_before, interrupted = done, on_worker[0]
                break
        time.sleep(0.3)
    assert interrupted is not None, "no moment with a finished trial and one on the worker"

    info = wait_job(cluster, sub.submission_id)
    logs = job_logs(cluster, sub.submission_id)
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    assert _parent_pid(worker_pid) is None  # the worker node is gone: the head finished it
    runs = check_sweep(cluster, sub.experiment, tmp_path)
    assert int(runs.parent.data.params["trials"]) == 10
    # No finished trial lost: the same runs, still FINISHED.
    for key, run_id in finished_before.items():
        assert runs.children[key].info.run_id == run_id
    # The interrupted trial ran again: its partial run is gone, a new one finished.
    key = interrupted.data.tags["stadv.trial_key"]
    again = client.get_run(interrupted.info.run_id)
    retried = again.info.status != "FINISHED"  # False only if killed right as it finished
    if retried:
        assert again.info.lifecycle_stage == "deleted"
        assert runs.children[key].info.run_id != interrupted.info.run_id
        assert "retry" in logs
    with capsys.disabled():
        print(
            f"\nworker raylet killed with {len(finished_before)}/10 trials finished, "
            f"{interrupted.info.run_name!r} running on it (retried on the head: {retried}); "
            f"the sweep finished all 10 on the head, the finished runs unchanged"
        )
