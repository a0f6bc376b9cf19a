"""Shared test fixtures: real MNIST from ../shared/data in a temporary root, tiny trained models.

Nothing here downloads: the data come from the gzipped IDX files beside the repository
(``../shared/data``) or from ``$STADV_DATA_SOURCE``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from stadv.data import TensorData, ensure_data, load_tensors
from stadv.models import build_model
from stadv.train import train_model

REPO = Path(__file__).resolve().parents[1]


def shared_data_source() -> Path:
    env = os.environ.get("STADV_DATA_SOURCE")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # Two cores shared with Ray workers in some tests: one intra-op thread is the robust choice.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_source() -> Path:
    src = shared_data_source()
    if not (src / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST not found under {src} (set STADV_DATA_SOURCE)")
    return src


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory, data_source: Path) -> Path:
    root = tmp_path_factory.mktemp("data")
    ensure_data("mnist", data_dir=root, source_dir=data_source, download=False)
    return root


@pytest.fixture(scope="session")
def mnist_test(data_root: Path) -> TensorData:
    return load_tensors("mnist", split="test", data_dir=data_root, download=False)


@pytest.fixture(scope="session")
def mnist_train_small(data_root: Path) -> TensorData:
    return load_tensors("mnist", split="train", data_dir=data_root, download=False).slice(0, 5000)


@pytest.fixture(scope="session")
def tiny_model_b(mnist_train_small: TensorData) -> torch.nn.Module:
    """Model B trained one epoch on 5,000 real MNIST images (~93-97 % test accuracy, seconds)."""
    torch.manual_seed(0)
    model = build_model("B")
    train_model(model, mnist_train_small, epochs=1, seed=0, progress=False)
    return model.eval()


#: Why a CUDA run skips: said once, so every skipped GPU test reads the same.
NO_CUDA = "CUDA is not available on this machine: the cuda run of this test needs a GPU"


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA),
            ],
        ),
    ]
)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test that takes a device runs on the CPU and, where there is one, on CUDA (the
    ``cuda`` run is marked ``cuda``: ``pytest -m cuda`` selects it, and it skips without a
    GPU, so the CPU suite's run time stays the same)."""
    return torch.device(request.param)


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


# --- sweeps (tests/test_sweeps.py): one Ray instance and one model store per session ---------


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A local Ray instance shared by the sweep tests (2 CPUs, no dashboard, no auth token).

    The sweep scripts run as subprocesses and join it with ``--address``; starting Ray once
    saves ~5 s per sweep.
    """
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="session")
def sweep_env(data_source: Path) -> dict[str, str]:
    """Environment of sweep subprocesses: no auth token, real MNIST, no inherited MLflow URI."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", STADV_DATA_SOURCE=str(data_source), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model store shared by the sweep tests (the smoke model is quick-trained into it once)."""
    return tmp_path_factory.mktemp("sweep-store")


#: sweeps/<name>.py -> the module whose ``main(argv)`` the script calls
SWEEP_MAINS = {
    "kappa_tau": "stadv_sweeps.plans.kappa_tau",
    "ablation": "stadv_sweeps.plans.ablation",
    "defense_sweep": "stadv_sweeps.plans.defense",
    "results": "stadv_sweeps.plans.report_cli",
}

SweepMain = Callable[[str, list[str]], "subprocess.CompletedProcess[str]"]


@pytest.fixture
def sweep_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data_source: Path
) -> SweepMain:
    """``sweeps/<name>.py argv`` run in this process (the ``main`` the script calls), in the
    sweep subprocesses' environment (no inherited MLflow URI or Ray address, real MNIST); its
    exit status and output as a process's. For the checks that stop a script before any work:
    a subprocess per case spent ~15 s of CI each importing torch, Ray and MLflow."""
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("STADV_DATA_SOURCE", str(data_source))

    def run(name: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        main = importlib.import_module(SWEEP_MAINS[name]).main
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's errors
            code = exit.code if isinstance(exit.code, int) else 2
        out = capsys.readouterr()
        return subprocess.CompletedProcess([name, *argv], code, out.out, out.err)

    return run
