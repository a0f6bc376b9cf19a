"""``benchmarks/attack_throughput.py``, run for real as a user runs it, in a tiny configuration.

Model B is quick-trained (1 epoch on 1,000 real MNIST images) into a temporary store; the script
attacks 2 test images with at most 20 iterations and writes JSON. Checked: the JSON's keys, that
every throughput number is finite and positive, that the speedups are the ratios of the rows'
attacks/s, that success and its Wilson interval are consistent, and that the printed table names
each method. The advertorch comparison runs only where advertorch (the ``bench`` extra) is
installed; CI installs ``.[dev,cluster]``, so there it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stadv.store import train_and_store

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "attack_throughput.py"
TABLE1 = REPO / "benchmarks" / "table1.py"
TOP_KEYS = {
    "environment",
    "rows",
    "goals",
    "speedup_vs_advertorch",
    "speedup_vs_scipy_loop",
    "speedup_vs_scipy_batched",
    "speedup_continuous_vs_chunks",
    "matmul_peak_gflops",
    "model_forward_flops_per_image",
    "model_flops_per_image_evaluation",
    "lbfgs_achieved_gflops",
    "lbfgs_fraction_of_peak",
    "lbfgs_achieved_gflops_cpu_time",
    "lbfgs_fraction_of_peak_cpu_time",
}
ENV_KEYS = {
    "torch",
    "device",
    "threads",
    "batch_size",
    "cpu_model",
    "n_images",
    "targets",
    "max_iterations",
    "load_average_start",
    "load_average_end",
}
POSITIVE_ROW_KEYS = (
    "seconds",
    "attacks_per_second",
    "image_iterations",
    "image_iterations_per_second",
    "image_evaluations",
    "image_evaluations_per_second",
    "mean_iterations",
    "model_gflops",
    "cpu_seconds",
    "attacks_per_cpu_second",
    "model_gflops_cpu_time",
)


@pytest.fixture(scope="module")
def bench_store(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    store = tmp_path_factory.mktemp("bench-store")
    train_and_store(
        "B", store=store, data_dir=data_root, epochs=1, train_limit=1000, progress=False
    )
    return store


def run_benchmark(
    store: Path,
    data_root: Path,
    data_source: Path,
    out: Path,
    methods: list[str],
    repeats: int = 1,
) -> tuple[dict[str, Any], str]:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--model", "B",
        "--store", str(store),
        "--data-dir", str(data_root),
        "--n-images", "2",
        "--max-iterations", "20",
        "--threads", "1",
        "--device", "cpu",
        "--matmul-size", "256",
        "--repeats", str(repeats),
        "--methods", *methods,
        "--json", str(out),
    ]  # fmt: skip
    proc = run_script(cmd, data_source)
    return json.loads(out.read_text()), proc.stdout


def run_script(cmd: list[str], data_source: Path) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script as a user does (real data from ``data_source``); must succeed."""
    env = {**os.environ, "STADV_DATA_SOURCE": str(data_source)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_rows(report: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
    assert TOP_KEYS <= set(report)
    assert ENV_KEYS <= set(report["environment"])
    env = report["environment"]
    assert (env["n_images"], env["max_iterations"], env["threads"]) == (2, 20, 1)
    assert env["targets"] == "random" and env["device"] == "cpu"
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == methods
    for name, row in rows.items():
        assert row["attacks"] == 2, name
        for key in POSITIVE_ROW_KEYS:
            assert positive(row[key]), (name, key, row[key])
        assert row["mean_iterations"] <= 20, name
        assert math.isclose(row["attacks_per_second"], 2 / row["seconds"], rel_tol=1e-9)
        rate = row["targeted_success_rate"]
        assert rate == row["successes"] / 2
        assert 0 <= row["targeted_success_ci_low"] <= rate <= row["targeted_success_ci_high"] <= 1
        assert 0 <= row["targeted_success_rate_excluding_zero_images"] <= rate, name
        assert math.isfinite(row["mean_flow_loss"]) and row["mean_flow_loss"] >= 0, name
        assert sum(row["stop_reasons"].values()) == 2, name
    assert positive(report["matmul_peak_gflops"])
    assert report["matmul_peak_gflops"] == max(
        report["matmul_peak_gflops_start"], report["matmul_peak_gflops_end"]
    )
    assert positive(report["model_flops_per_image_evaluation"])
    # Input-gradient backward costs about as much as the forward pass again.
    assert report["model_flops_per_image_evaluation"] > report["model_forward_flops_per_image"]
    lbfgs = rows["lbfgs"]
    assert math.isclose(
        report["lbfgs_achieved_gflops"],
        report["model_flops_per_image_evaluation"]
        * lbfgs["image_evaluations"]
        / lbfgs["seconds"]
        / 1e9,
        rel_tol=1e-9,
    )
    assert math.isclose(
        report["lbfgs_fraction_of_peak"],
        report["lbfgs_achieved_gflops"] / report["matmul_peak_gflops"],
        rel_tol=1e-9,
    )
    return rows


def test_throughput_lbfgs_vs_scipy_loop(
    bench_store: Path, data_root: Path, data_source: Path, tmp_path: Path
) -> None:
    methods = ["lbfgs", "lbfgs-chunks", "lbfgs-strong", "lbfgs-first-success", "scipy-loop"]
    methods += ["scipy-loop-first-success"]
    report, stdout = run_benchmark(
        bench_store, data_root, data_source, tmp_path / "out.json", methods, repeats=2
    )
    rows = check_rows(report, methods)
    for row in rows.values():  # the fastest of the two timed runs is the one reported
        assert len(row["seconds_each_repeat"]) == 2
        assert row["seconds"] == min(row["seconds_each_repeat"])
    assert math.isclose(
        report["speedup_vs_scipy_loop"],
        rows["lbfgs"]["attacks_per_second"] / rows["scipy-loop"]["attacks_per_second"],
        rel_tol=1e-9,
    )
    assert math.isclose(
        report["speedup_continuous_vs_chunks"],
        rows["lbfgs"]["attacks_per_second"] / rows["lbfgs-chunks"]["attacks_per_second"],
        rel_tol=1e-9,
    )
    # continuous batching and chunks solve the same attacks: same successes, same work
    for key in ("targeted_success_rate", "mean_iterations"):
        assert rows["lbfgs"][key] == pytest.approx(rows["lbfgs-chunks"][key], rel=0.05)
    assert report["speedup_vs_advertorch"] is None  # not run: the key is there, null
    assert report["speedup_vs_scipy_batched"] is None
    assert set(report["goals"]) == {"scipy-loop"}
    goal = report["goals"]["scipy-loop"]
    assert goal["met"] == (goal["speedup"] >= 3 and goal["success_equal_or_better"])
    assert "lbfgs" in stdout and "scipy-loop" in stdout and "speedup_vs_scipy_loop" in stdout
    # the strong-Wolfe run (SciPy's algorithm) has its own ratios and goals
    strong = report["lbfgs_strong"]
    assert math.isclose(
        strong["speedup_vs_scipy_loop"],
        rows["lbfgs-strong"]["attacks_per_second"] / rows["scipy-loop"]["attacks_per_second"],
        rel_tol=1e-9,
    )
    assert set(strong["goals"]) == {"scipy-loop"} and "lbfgs-strong: goal" in stdout
    fast = report["lbfgs_first_success"]
    assert math.isclose(
        fast["speedup_vs_scipy_loop"],
        rows["lbfgs-first-success"]["attacks_per_second"]
        / rows["scipy-loop"]["attacks_per_second"],
        rel_tol=1e-9,
    )
    assert math.isclose(
        fast["speedup_vs_scipy_loop_first_success"],
        rows["lbfgs-first-success"]["attacks_per_second"]
        / rows["scipy-loop-first-success"]["attacks_per_second"],
        rel_tol=1e-9,
    )
    # stopping at the first success never takes more iterations than running on
    assert rows["lbfgs-first-success"]["mean_iterations"] <= rows["lbfgs"]["mean_iterations"]


def test_throughput_vs_advertorch(
    bench_store: Path, data_root: Path, data_source: Path, tmp_path: Path
) -> None:
    # advertorch 0.2.3 does not import under torch >= 1.9 without the script's shim, so
    # importorskip would skip even where it is installed: look for the package instead.
    if importlib.util.find_spec("advertorch") is None:
        pytest.skip("advertorch (the `bench` extra) is not installed")
    methods = ["lbfgs", "advertorch"]
    report, stdout = run_benchmark(
        bench_store, data_root, data_source, tmp_path / "out.json", methods
    )
    rows = check_rows(report, methods)
    adv = rows["advertorch"]
    assert math.isclose(
        report["speedup_vs_advertorch"],
        rows["lbfgs"]["attacks_per_second"] / adv["attacks_per_second"],
        rel_tol=1e-9,
    )
    assert report["environment"]["advertorch"] == "0.2.3"
    assert any("zero_gradients" in s for s in report["environment"]["advertorch_shims"])
    # One coupled problem for the batch: both attacks report the batch's iteration count.
    assert adv["image_iterations"] == 2 * adv["mean_iterations"]
    # The flow recovered from its final grid reproduces its warped images under our warp.
    assert adv["flow_recovery_max_abs_diff"] < 1e-4
    assert "advertorch" in stdout and "speedup_vs_advertorch" in stdout


def load_script(monkeypatch: pytest.MonkeyPatch, path: Path = SCRIPT) -> Any:
    """A script as a module (registered for the test only: a dataclass needs the entry)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_table1_writes_a_row_per_reading(
    bench_store: Path, data_root: Path, data_source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "table1.json"
    readings = ["eq5", "default-keep-last-no-restart"]
    cmd = [
        sys.executable, str(TABLE1),
        "--models", "B",
        "--readings", *readings,
        "--store", str(bench_store),
        "--data-dir", str(data_root),
        "--n-images", "2",
        "--max-iterations", "20",
        "--threads", "1",
        "--device", "cpu",
        "--json", str(out),
    ]  # fmt: skip
    proc = run_script(cmd, data_source)
    report = json.loads(out.read_text())
    assert not (tmp_path / "table1.json.tmp").exists()
    assert report["environment"]["n_images"] == 2 and report["environment"]["device"] == "cpu"
    rows = report["rows"]
    assert [(r["model"], r["reading"]) for r in rows] == [("B", r) for r in readings]
    for row in rows:
        assert row["attacks"] == 18  # 2 images x 9 other classes
        assert row["params"]["tau"] == 0.05 and row["params"]["kappa"] == 0.0
        assert row["params"]["max_iterations"] == 20
        assert sum(row["stop_reasons"].values()) == 18
        for key in ("targeted_success_rate", "targeted_success_rate_alone"):
            assert 0.0 <= row[key] <= 1.0
        rate = row["targeted_success_rate"]
        assert row["targeted_success_ci_low"] <= rate <= row["targeted_success_ci_high"]
        low, high = row["targeted_success_alone_ci"]
        assert low <= row["targeted_success_rate_alone"] <= high
        assert math.isfinite(row["mean_flow_loss"])
        # iterations add up over the solves: the first and each restart, 20 at most each
        assert row["mean_iterations"] <= 20 * (1 + row["params"]["restarts"])
    default, last = rows
    assert (default["params"]["keep"], default["params"]["restarts"]) == ("best", 3)
    assert (last["params"]["keep"], last["params"]["restarts"]) == ("last", 0)
    # one printed line per row, after the header
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("B ")]
    assert [ln.split()[1] for ln in lines] == readings


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        (SCRIPT, ["--methods", "lbfgs", "foolbox"], "invalid choice: 'foolbox'"),
        (SCRIPT, ["--n-images", "0"], "--n-images must be >= 1, got 0"),
        (SCRIPT, ["--targets", "least-likely"], "invalid choice: 'least-likely'"),
        (TABLE1, ["--models", "D"], "invalid choice: 'D'"),
        (TABLE1, ["--readings", "eq6"], "invalid choice: 'eq6'"),
        (TABLE1, ["--n-images", "0"], "--n-images must be >= 1, got 0"),
        (TABLE1, ["--start", "-1"], "--start must be >= 0, got -1"),
    ],
    ids=lambda v: v.stem if isinstance(v, Path) else None,
)
def test_bad_arguments_are_refused(
    script: Path,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(monkeypatch, script).parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_frontier_rows_and_figure(
    bench_store: Path, data_root: Path, data_source: Path, tmp_path: Path
) -> None:
    """``benchmarks/frontier.py``: one row per schedule on the same attacks; polishing sits
    between the first success and convergence in cost; the ratios are the rows' own."""
    out, png = tmp_path / "frontier.json", tmp_path / "frontier.png"
    schedules = ["converged", "first-success", "polish-5"]
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "frontier.py"),
        "--model", "B", "--store", str(bench_store), "--data-dir", str(data_root),
        "--n-images", "1", "--device", "cpu", "--max-iterations", "60",
        "--schedules", *schedules, "--json", str(out), "--figure", str(png),
        "--record", str(tmp_path / "records"),
    ]  # fmt: skip
    proc = run_script(cmd, data_source)
    rows = {r["schedule"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == schedules
    for name, row in rows.items():
        assert row["attacks"] == 9 and row["ci_low"] <= row["success"] <= row["ci_high"]
        assert positive(row["evaluations_per_attack"]) and positive(row["attacks_per_s"])
        assert name in proc.stdout
    conv, first, polish = (rows[s] for s in schedules)
    assert first["evaluations_per_attack"] <= polish["evaluations_per_attack"]
    assert polish["evaluations_per_attack"] < conv["evaluations_per_attack"]
    assert first["evaluations_vs_converged"] == pytest.approx(
        conv["evaluations_per_attack"] / first["evaluations_per_attack"]
    )
    assert conv["flow_loss_vs_converged"] == pytest.approx(1.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in schedules:  # one record per schedule, its success the row's
        record = json.loads((tmp_path / "records" / f"B-{name}.json").read_text())
        assert (record["n"], record["successes"]) == (9, rows[name]["successes"])
        assert record["command"].startswith("python benchmarks/frontier.py --model B")
    # the figure again, from the records alone; a folder without B's records is named
    redrawn = tmp_path / "redrawn.png"
    base = [sys.executable, str(REPO / "benchmarks" / "frontier.py"), "--model", "B"]
    run_script(
        [*base, "--from-records", str(tmp_path / "records"), "--figure", str(redrawn)], data_source
    )
    assert redrawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [*base, "--from-records", str(empty), "--figure", str(tmp_path / "none.png")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and str(empty) in proc.stderr and "'B'" in proc.stderr
    assert not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------------------------------------
# benchmarks/detector_threshold.py: the VAE detector at a fixed divergence threshold
# ---------------------------------------------------------------------------------------------
def _load_detector_threshold() -> Any:
    spec = importlib.util.spec_from_file_location(
        "detector_threshold", REPO / "benchmarks" / "detector_threshold.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_divergences_vanish_when_the_reconstruction_is_the_input() -> None:
    import torch
    from torch import nn

    from defenses.vae_detector import VAEDetector

    script = _load_detector_threshold()
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(6, 1, 4, 4)
    same = script.divergences(VAEDetector(nn.Identity(), classifier), x)
    assert all(float(v.abs().max()) < 1e-6 for v in same.values())
    # a reconstruction that differs from the input: JSD within (0, ln 2], KL >= 0
    flip = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Unflatten(1, (1, 4, 4)))
    other = script.divergences(VAEDetector(flip, classifier), x)
    assert bool((other["jsd_t1"] > 0).all()) and bool((other["jsd_t1"] <= math.log(2)).all())
    assert bool((other["kl_t1"] >= 0).all())


@pytest.mark.slow
def test_detector_threshold_writes_a_record_per_attack(
    bench_store: Path, data_root: Path, data_source: Path, tmp_path: Path
) -> None:
    from defenses.base import DefenseContext
    from defenses.vae_defense import VAEDetectorDefense
    from stadv.records import load_records
    from stadv.store import load_pretrained

    vae_opts = {"epochs": 1, "train_limit": 300, "n_validation": 100}
    made = VAEDetectorDefense(**vae_opts)  # trains and stores the tiny VAE the script loads
    model = load_pretrained("B", store=bench_store, data_dir=data_root)
    made.detector(model, DefenseContext(store=bench_store, data_dir=data_root, variant="t"))
    base = [sys.executable, str(REPO / "benchmarks" / "detector_threshold.py"), "--model", "B"]
    base += ["--store", str(bench_store), "--data-dir", str(data_root), "--variant", "t"]
    base += ["--vae-epochs", "1", "--train-limit", "300", "--n-validation", "100"]
    folder = tmp_path / "records"
    cmd = [*base, "--n-images", "4", "--n-clean", "50", "--attacks", "fgsm", "deepfool"]
    run_script([*cmd, "--record", str(folder)], data_source)
    recs = load_records(folder)
    assert set(recs) == {"B-fgsm", "B-deepfool"}
    for rec in recs.values():
        assert rec.n == rec.stats["attack_successes"] <= rec.stats["attacks"] == 4
        assert rec.successes is not None and rec.ci_low is not None and rec.ci_high is not None
        assert rec.n == 0 or rec.ci_low <= (rec.rate or 0.0) <= rec.ci_high
        for rule in ("jsd_t1", "kl_t1", "detector"):
            assert 0 <= rec.stats[f"clean_fpr_{rule}_rate"] <= 1
    bad = subprocess.run(
        [*base, "--threshold", "-1"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--threshold must be a finite number > 0, got -1" in bad.stderr


def test_the_frontier_marks_the_librarys_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/frontier.py``'s ``DEFAULT_SCHEDULE`` is ``StAdv()``'s own schedule, and
    every schedule spells its hinge (so a row stays its attack when the default changes)."""
    from stadv.attack import StAdv

    frontier = load_script(monkeypatch, REPO / "benchmarks" / "frontier.py")
    default, chosen = StAdv(), frontier.SCHEDULES[frontier.DEFAULT_SCHEDULE]
    assert chosen["hinge"] == default.hinge and chosen["stop"] == default.stop
    assert chosen["polish"] == default.effective_polish
    assert all("hinge" in options for options in frontier.SCHEDULES.values())
