"""``benchmarks/gpu_check.sh --dry-run``, run for real as a user runs it: the GPU check's steps
at toy size on the CPU (the CUDA tests collected and skipped here, Table 1 on 3 images of a
quick-trained Model B, a 4-trial smoke sweep without GPUs), and the one JSON it writes."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_help_lists_the_flags() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "--dry-run" in proc.stdout and "--peak-tflops" in proc.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown flag --bogus" in bad.stderr


@pytest.mark.slow
def test_dry_run_writes_the_json_of_every_step(
    tmp_path: Path, sweep_env: dict[str, str], ray_address: str
) -> None:
    out = tmp_path / "out" / "gpu_check.json"
    real_store = tmp_path / "real-store"
    env = {**sweep_env, "STADV_STORE": str(real_store)}
    env.pop("OUT", None)
    start = time.monotonic()
    proc = subprocess.run(
        # the sweep joins the session's Ray (tests/conftest.py) instead of starting its own
        ["bash", str(SCRIPT), "--dry-run", "--address", ray_address, str(out)],
        env=env,
        cwd=tmp_path,  # the script finds the repository itself
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - start
    print(f"gpu_check.sh --dry-run: {wall:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True
    assert report["environment"]["dry_run"] is True
    assert 0 < report["wall_seconds"] <= wall

    tests = report["cuda_tests"]
    assert tests["exit_status"] == 0 and tests["failures"] == 0 and tests["errors"] == 0
    assert tests["tests"] >= 5  # the device-parametrised tests' cuda runs and the CUDA-only ones
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"] and tests["passed"] == 0

    t1 = report["table1"]
    assert t1["model"] == "B" and t1["device"] == "cpu" and t1["gpu"] is None
    assert t1["n_images"] == 3 and t1["n_attacks"] == 27
    assert t1["params"]["tau"] == 0.05 and t1["params"]["kappa"] == 0.0
    assert t1["params"]["precision"] == "fp32" and t1["params"]["max_iterations"] == 30
    low, rate, high = (
        t1["targeted_success_ci_low"],
        t1["targeted_success_rate"],
        t1["targeted_success_ci_high"],
    )
    assert 0 <= low <= rate <= high <= 1 and high > low
    assert t1["image_evaluations"] >= t1["n_attacks"]
    assert t1["flops_per_image_evaluation"] > 1e5  # Model B: millions per image
    assert t1["attacks_per_second"] == pytest.approx(27 / t1["seconds"])
    achieved = t1["flops_per_image_evaluation"] * t1["image_evaluations"] / t1["seconds"]
    assert t1["achieved_tflops"] == pytest.approx(achieved / 1e12)
    assert t1["peak_tflops"] == 67.0
    assert t1["fraction_of_peak"] == pytest.approx(achieved / 67e12)
    assert math.isfinite(t1["fraction_of_peak"]) and t1["fraction_of_peak"] > 0

    sweep = report["sweep"]
    assert sweep["exit_status"] == 0 and sweep["gpus_per_trial"] == 0
    assert sweep["trials"] == sweep["finished"] == 4
    assert all(d.startswith("cpu") for d in sweep["devices"]), sweep["devices"]
    assert not real_store.exists()  # the toy models went to the check's temporary store
