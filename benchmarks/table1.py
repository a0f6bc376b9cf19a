"""Reproduce the paper's Table 1 (targeted success at tau = 0.05, kappa = 0) per flow-loss reading.

For each model and each reading of the flow loss (Eq. 4 / Eq. 5 and its normalisations, pixel /
grid units) and of ``keep`` (best / last), attacks test images 0 .. n-1 towards all 9 other
classes and prints a table of targeted success (Wilson 95 % interval), the same success with
each returned image re-judged alone (a batch of one: float32 logits move with the batch size,
which decides attacks that end on the decision boundary), mean L_flow, iterations and time;
``--json PATH`` writes the rows with the environment. ``eq5`` is the library's default
(``success_margin`` 1e-3); ``eq5-bare`` accepts any argmax success (``success_margin=0``); ``eq5-strong`` uses SciPy's
strong Wolfe line search instead of the default weak one; ``eq5-no-restart`` solves each attack once
(no Gaussian restart of the failed ones); ``default-keep-last-no-restart`` returns L-BFGS's last
iterate and solves each attack once. ``--json`` is rewritten after every row; ``--record FOLDER``
writes one record per row (:mod:`stadv.records`, the format of ``results/``) as it finishes.

    python benchmarks/table1.py --models A B C --n-images 100 --json table1.json --record out/

Models come from the model store (trained first if missing). tau and kappa stay the paper's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from stadv.attack import StAdv
from stadv.data import load_tensors
from stadv.devices import resolve_device
from stadv.metrics import summarize, wilson_interval
from stadv.models import PAPER_TABLE1_SUCCESS as PAPER
from stadv.models import predict
from stadv.records import machine_info, record_from_summary, write_record
from stadv.store import load_pretrained

READINGS: dict[str, dict[str, Any]] = {
    "eq4": {"flow_loss": "eq4"},
    "eq4-grid": {"flow_loss": "eq4", "units": "grid"},
    "eq5": {"flow_loss": "eq5"},
    "eq5-bare": {"flow_loss": "eq5", "success_margin": 0.0},
    "eq5-strong": {"flow_loss": "eq5", "wolfe": "strong"},
    "eq5-no-restart": {"flow_loss": "eq5", "restarts": 0},
    "eq5-sqrt_n": {"flow_loss": "eq5", "eq5_scale": "sqrt_n"},
    "eq5-n": {"flow_loss": "eq5", "eq5_scale": "n"},
    "eq5-grid": {"flow_loss": "eq5", "units": "grid"},
    "eq5-gauss": {"flow_loss": "eq5", "init": "gaussian"},
    "eq5-sqrt_n-gauss": {"flow_loss": "eq5", "eq5_scale": "sqrt_n", "init": "gaussian"},
    "eq4-gauss": {"flow_loss": "eq4", "init": "gaussian"},
    "default-keep-last": {"keep": "last"},
    "default-keep-last-no-restart": {"keep": "last", "restarts": 0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; bad values exit with status 2 and name the value."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["A", "B", "C"], choices=list(PAPER))
    p.add_argument("--readings", nargs="+", default=list(READINGS), choices=list(READINGS))
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--solver", default="lbfgs")
    p.add_argument("--max-iterations", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--store", default=None, help="model store (default ~/.cache/stadv/models)")
    p.add_argument("--data-dir", default=None, help="data root (default: the library's)")
    p.add_argument("--json", default=None, help="write the rows here (after every row)")
    p.add_argument("--record", default=None, help="write one record per row into this folder")
    args = p.parse_args(argv)
    if args.n_images < 1:
        p.error(f"--n-images must be >= 1, got {args.n_images}")
    if args.start < 0:
        p.error(f"--start must be >= 0, got {args.start}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/table1.py", *(sys.argv[1:] if argv is None else argv)]
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    test = load_tensors("mnist", split="test", data_dir=args.data_dir).slice(
        args.start, args.start + args.n_images
    )
    x, y = test.images.to(device), test.labels.to(device)
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "n_images": args.n_images,
        "start": args.start,
        "solver": args.solver,
        "batch_size": args.batch_size,
    }
    rows: list[dict[str, Any]] = []
    print(
        f"{'model':5} {'reading':18} {'success':>8} {'95% CI':>15} {'alone':>7} {'paper':>7} {'L_flow':>8} {'iters':>7} {'sec':>7}"
    )
    for name in args.models:
        model = load_pretrained(
            name, dataset="mnist", store=args.store, data_dir=args.data_dir, device=device
        )
        for reading in args.readings:
            attack = StAdv(
                tau=0.05,
                kappa=0.0,
                solver=args.solver,
                max_iterations=args.max_iterations,
                batch_size=args.batch_size,
                **READINGS[reading],
            )
            t0 = time.perf_counter()
            result = attack(model, x, y, targets="all")
            s: dict[str, Any] = dict(summarize(result))
            alone = torch.cat(
                [predict(model, result.adv_images[i : i + 1]) for i in range(len(result))]
            )
            assert result.targets is not None
            hits = int((alone == result.targets).sum()) if len(result) else 0
            s["targeted_success_rate_alone"] = hits / max(len(result), 1)
            s["targeted_success_alone_ci"] = wilson_interval(hits, len(result))
            row = {
                "model": name,
                "reading": reading,
                "params": attack.to_dict(),
                "paper": PAPER[name],
                "wall_seconds": time.perf_counter() - t0,
                **s,
                "stop_reasons": {
                    r: result.stop_reason.count(r) for r in sorted(set(result.stop_reason))
                },
            }
            rows.append(row)
            print(
                f"{name:5} {reading:18} {s['targeted_success_rate']:8.4f} "
                f"[{s['targeted_success_ci_low']:.3f},{s['targeted_success_ci_high']:.3f}] "
                f"{s['targeted_success_rate_alone']:7.4f} {PAPER[name]:7.4f} "
                f"{s['mean_flow_loss']:8.3f} {s['mean_iterations']:7.1f} {s['seconds']:7.1f}",
                flush=True,
            )
            if args.record:
                last = args.start + args.n_images - 1
                write_record(
                    record_from_summary(
                        {**summarize(result), "successes_judged_alone": float(hits)},
                        what=f"Table 1 reading {reading}: targeted success of stAdv on MNIST Model "
                        f"{name}, test images {args.start}-{last} x 9 targets, tau 0.05, kappa 0",
                        command=command,
                        paper=PAPER[name],
                        tags={"model": name, "reading": reading, "images": str(args.n_images)},
                        machine=machine_info(device),
                    ),
                    Path(args.record) / f"{name}-{reading}-{args.start}-{last}.json",
                )
            if args.json:  # after every row: a long run keeps what it measured
                _write_json(args.json, {"environment": env, "rows": rows})


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
