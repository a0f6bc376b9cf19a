"""The Python steps of ``benchmarks/gpu_check.sh``: Table 1 on Model B with throughput and the
fraction of the GPU's peak, then the one JSON of the whole check.

``table1``: Model B (trained into the store first if it is missing) attacked by the default
stAdv (the paper's tau 0.05, kappa 0) on test images 0 .. n-1 towards the 9 other classes;
reports targeted success with its Wilson 95 % interval, attacks/s, and the model FLOP rate
reached: FLOPs per image forward + input-gradient backward (``FlopCounterMode`` on Model B's
layers, :func:`attack_throughput.model_flops_per_image`) times the image evaluations the
result records (``result.evaluations``), over the attack's seconds, as a fraction of
``--peak-tflops`` (default 67: the H200's nominal fp32 peak without tensor cores; the
achieved rate counts fp32 work, so with ``--precision tf32`` the fraction can exceed what
strict fp32 allows). Why the fraction: an attack of tiny MNIST models is bound by kernel
launches and the solver's per-iteration work, not by FLOPs; the fraction says how far.

``--dry-run`` (the toy size on the CPU): a Model B trained here for one epoch on
``--train-limit`` images and never stored (the real store is not touched), ``--n-images``
images and at most ``--max-iterations`` solver iterations.

``assemble``: one JSON from the steps' outputs: the CUDA tests' JUnit XML, the Table 1
part, the smoke sweep's exit status and its MLflow runs (4 trials, FINISHED, the device each
ran on).

    python benchmarks/gpu_check.py table1 --out part.json [--dry-run]
    python benchmarks/gpu_check.py assemble --out gpu_check.json --pytest-xml ... ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
from attack_throughput import model_flops_per_image

from stadv.attack import StAdv
from stadv.data import load_tensors
from stadv.devices import resolve_device
from stadv.metrics import summarize
from stadv.models import PAPER_TABLE1_SUCCESS, build_model
from stadv.precision import PRECISIONS
from stadv.records import machine_info
from stadv.store import load_pretrained
from stadv.train import train_model
from stadv_sweeps.engine.tags import PARENT_TAG

#: The H200's nominal fp32 peak without tensor cores, TFLOP/s (NVIDIA's H200 datasheet: 67).
H200_FP32_TFLOPS = 67.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table1(args: argparse.Namespace) -> dict[str, Any]:
    """Model B's Table 1 cell, its throughput and the fraction of the peak (see the module)."""
    device = resolve_device("cpu" if args.dry_run else args.device)
    if args.dry_run:  # trained here, never stored: a toy model must not meet the real ones
        train = load_tensors("mnist", split="train", data_dir=args.data_dir, download=False)
        torch.manual_seed(0)
        model = build_model("B")
        train_model(
            model, train.slice(0, args.train_limit), epochs=1, device=device, progress=False
        )
        model = model.to(device).eval()
        trained = f"quick-trained on {args.train_limit} images (dry run), not stored"
    else:
        model = load_pretrained(
            "B", store=args.store, data_dir=args.data_dir, device=device, progress=True
        )
        trained = "from the store (trained first if it was missing)"
    test = load_tensors("mnist", split="test", data_dir=args.data_dir, download=False)
    data = test.slice(0, args.n_images)
    x, y = data.images.to(device), data.labels.to(device)
    batch = args.batch_size or (9 * args.n_images if device.type == "cuda" else 256)
    attack = StAdv(
        tau=0.05,
        kappa=0.0,
        max_iterations=args.max_iterations,
        batch_size=batch,
        precision=args.precision,
    )
    _, flops_per_eval = model_flops_per_image(model, tuple(x.shape[1:]), device)
    synchronize(device)
    start = time.perf_counter()
    result = attack(model, x, y, targets="all")
    synchronize(device)
    seconds = time.perf_counter() - start
    s = summarize(result)
    evaluations = int(result.evaluations.sum())
    achieved = flops_per_eval * evaluations / seconds if seconds > 0 else math.nan
    peak = args.peak_tflops * 1e12
    return {
        "model": "B",
        "model_source": trained,
        "device": str(device),
        "gpu": machine_info(device).gpu,
        "n_images": args.n_images,
        "n_attacks": len(result),
        "params": attack.to_dict(),
        "targeted_success_rate": s["targeted_success_rate"],
        "targeted_success_ci_low": s["targeted_success_ci_low"],
        "targeted_success_ci_high": s["targeted_success_ci_high"],
        "paper": PAPER_TABLE1_SUCCESS["B"],
        "mean_flow_loss": s["mean_flow_loss"],
        "mean_iterations": s["mean_iterations"],
        "seconds": seconds,
        "attacks_per_second": len(result) / seconds if seconds > 0 else math.nan,
        "image_evaluations": evaluations,
        "flops_per_image_evaluation": flops_per_eval,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": args.peak_tflops,
        "fraction_of_peak": achieved / peak,
    }


def pytest_counts(path: Path) -> dict[str, int]:
    """Tests, failures, errors and skips of a JUnit XML file (pytest's ``--junitxml``)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def sweep_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The smoke sweep's trials as its MLflow store holds them: how many finished, and the
    device each ran on (its ``device`` tag: ``cuda (...)`` when Ray gave it a GPU share)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {"trials": 0, "finished": 0, "devices": []}
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return {
        "trials": len(children),
        "finished": sum(r.info.status == "FINISHED" for r in children),
        "devices": sorted(r.data.tags["device"] for r in children),
    }


def assemble(args: argparse.Namespace) -> dict[str, Any]:
    """The check's one JSON (see the module docstring)."""
    part = json.loads(Path(args.table1).read_text())
    tests = pytest_counts(Path(args.pytest_xml))
    sweep = {
        "exit_status": args.sweep_status,
        "gpus_per_trial": args.gpus_per_trial,
        "seconds": args.sweep_seconds,
        **sweep_runs(args.tracking_uri, args.experiment),
    }
    ok = (
        args.pytest_status == 0
        and tests["failures"] == 0
        and tests["errors"] == 0
        and args.sweep_status == 0
        and sweep["finished"] == sweep["trials"] > 0
    )
    return {
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda_available": torch.cuda.is_available(),
            "gpu": machine_info().gpu,
            "cpu_count": os.cpu_count(),
            "dry_run": args.dry_run,
        },
        "dry_run": args.dry_run,
        "ok": ok,
        "cuda_tests": {
            "exit_status": args.pytest_status,
            "seconds": args.pytest_seconds,
            **tests,
        },
        "table1": part,
        "sweep": sweep,
        "wall_seconds": args.wall_seconds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    t = sub.add_parser("table1", help="Model B's Table 1 cell with throughput and peak fraction")
    t.add_argument("--out", required=True, help="write the part's JSON here")
    t.add_argument("--dry-run", action="store_true", help="toy size on the CPU")
    t.add_argument("--n-images", type=int, default=1000)
    t.add_argument("--max-iterations", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=None, help="default: all attacks on CUDA")
    t.add_argument("--train-limit", type=int, default=500, help="dry run: training images")
    t.add_argument("--precision", default="fp32", choices=PRECISIONS)
    t.add_argument("--peak-tflops", type=float, default=H200_FP32_TFLOPS)
    t.add_argument("--device", default=None)
    t.add_argument("--store", default=None)
    t.add_argument("--data-dir", default=None)
    a = sub.add_parser("assemble", help="the check's one JSON from the steps' outputs")
    a.add_argument("--out", required=True)
    a.add_argument("--dry-run", action="store_true")
    a.add_argument("--table1", required=True, help="the table1 step's JSON")
    a.add_argument("--pytest-xml", required=True)
    a.add_argument("--pytest-status", type=int, required=True)
    a.add_argument("--pytest-seconds", type=float, required=True)
    a.add_argument("--sweep-status", type=int, required=True)
    a.add_argument("--sweep-seconds", type=float, required=True)
    a.add_argument("--gpus-per-trial", type=float, required=True)
    a.add_argument("--tracking-uri", required=True)
    a.add_argument("--experiment", required=True)
    a.add_argument("--wall-seconds", type=float, required=True)
    args = p.parse_args(argv)
    if args.step == "table1":
        for flag in ("n_images", "max_iterations", "train_limit"):
            if getattr(args, flag) < 1:
                p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        if not args.peak_tflops > 0:
            p.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = table1(args) if args.step == "table1" else assemble(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, allow_nan=True))
    if args.step == "table1":
        r = report
        print(
            f"Table 1, model B: {r['n_attacks']} attacks on {r['device']}: success "
            f"{r['targeted_success_rate']:.4f} [{r['targeted_success_ci_low']:.4f}, "
            f"{r['targeted_success_ci_high']:.4f}] (paper {r['paper']}), "
            f"{r['attacks_per_second']:.1f} attacks/s, {r['achieved_tflops']:.3f} TFLOP/s = "
            f"{r['fraction_of_peak']:.2%} of {r['peak_tflops']:g} TFLOP/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
