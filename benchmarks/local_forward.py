"""Few-pixel candidates: the whole model against :class:`stadv.local_forward.LocalForward`.

For each model and k, the same candidates (k random pixels of the first ``--images`` test
images, ``--candidates`` in all, drawn as few-pixel DE draws its initial population) are
evaluated by the model (in calls of 256, FewPixel's CPU default) and by ``LocalForward`` (the
clean activations kept, each convolution recomputed only where the pixels reach), in fp32 and
in bfloat16 autocast, side by side in one process. It prints CPU milliseconds per 1,000
evaluations (the best of ``--repeats``), the ratio, the largest logit difference (fp32), and
whether the local path ran (``LocalForward.local(k)``; where it does not, the model runs).

    python benchmarks/local_forward.py --models A B C --pixels 1 3 5 --threads 1 \\
        --json /tmp/local_forward.json --record results/local_forward

``--untrained`` uses freshly initialised models (seconds, no model store: the test's mode).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stadv.data import load_tensors
from stadv.few_pixel import CPU_MAX_BATCH, FewPixel
from stadv.local_forward import LocalForward
from stadv.models import build_model
from stadv.records import make_record, write_record
from stadv.store import load_pretrained

PRECISIONS = ("fp32", "bf16")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    p.add_argument("--pixels", nargs="+", type=int, default=[1, 3, 5], help="k values")
    p.add_argument("--images", type=int, default=4, help="clean test images")
    p.add_argument("--candidates", type=int, default=2048, help="candidates per (model, k)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is kept)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--untrained", action="store_true", help="fresh models, no store")
    p.add_argument("--store", default=None, help="model store")
    p.add_argument("--data-dir", default=None, help="data root (default: the library's)")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--record", default=None, help="write one record per row into this folder")
    args = p.parse_args(argv)
    for name in ("images", "candidates", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(k < 1 for k in args.pixels):
        p.error(f"--pixels must be >= 1, got {args.pixels}")
    return args


def cpu_ms(run: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """The least CPU time of ``repeats`` calls (after one warm-up), and the last output."""
    out = run()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        out = run()
        best = min(best, time.process_time() - start)
    return best * 1e3, out


def measure(
    net: torch.nn.Module, clean: torch.Tensor, k: int, n: int, repeats: int
) -> list[dict[str, Any]]:
    """The rows (one per precision) for ``k`` pixels on ``n`` candidates."""
    p = clean.shape[0]
    per = -(-n // p)
    z = FewPixel(pixels=k, population=per)._initial(
        tuple(clean.shape[1:]), torch.Generator().manual_seed(k)
    )
    z = z.repeat(p, 1, 1)  # (p per, k, 3): each image gets the same draws
    owner = torch.arange(p).repeat_interleave(per)
    images = FewPixel.render(clean[owner], z)
    rows = z[..., 0].floor().long()
    cols = z[..., 1].floor().long()
    fwd = LocalForward(net, clean)
    step = CPU_MAX_BATCH
    total = images.shape[0]

    def whole() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(images[i : i + step]) for i in range(0, total, step)])

    def local() -> torch.Tensor:
        return torch.cat(
            [
                fwd(
                    images[i : i + step],
                    owner[i : i + step],
                    rows[i : i + step],
                    cols[i : i + step],
                )
                for i in range(0, total, step)
            ]
        )

    out = []
    for precision in PRECISIONS:
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            full_ms, want = cpu_ms(whole, repeats)
            local_ms, got = cpu_ms(local, repeats)
        out.append(
            {
                "k": k,
                "precision": precision,
                "evaluations": total,
                "local_path": fwd.local(k),
                "model_ms_per_1000": full_ms * 1000 / total,
                "local_ms_per_1000": local_ms * 1000 / total,
                "speedup": full_ms / local_ms,
                "max_logit_difference": float((want.float() - got.float()).abs().max()),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    clean = load_tensors("mnist", split="test", data_dir=args.data_dir).images[: args.images]
    results = []
    for name in args.models:
        if args.untrained:
            torch.manual_seed(0)
            net = build_model(name)
        else:
            net = load_pretrained(name, store=args.store, train_if_missing=False)
        net.eval()
        for k in args.pixels:
            for row in measure(net, clean, k, args.candidates, args.repeats):
                results.append({"model": name, **row})
    head = f"{'model':<6}{'k':>3} {'precision':<10}{'local':>6}{'model ms/1k':>13}"
    print(head + f"{'local ms/1k':>13}{'speedup':>9}{'max |dlogit|':>14}")
    for r in results:
        print(
            f"{r['model']:<6}{r['k']:>3} {r['precision']:<10}{'yes' if r['local_path'] else 'no':>6}"
            f"{r['model_ms_per_1000']:>13.1f}{r['local_ms_per_1000']:>13.1f}"
            f"{r['speedup']:>8.2f}x{r['max_logit_difference']:>14.2e}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.record:
        command = shlex.join(["python", "benchmarks/local_forward.py", *sys.argv[1:]])
        folder = Path(args.record)
        for r in results:
            rec = make_record(
                what=(
                    f"few-pixel candidates (k = {r['k']}, {r['precision']}) on model {r['model']}: "
                    "CPU time per evaluation, the whole model against LocalForward"
                ),
                command=command,
                n=None,
                successes=None,
                stats={key: float(v) for key, v in r.items() if key not in ("model", "precision")},
                tags={"model": r["model"], "k": str(r["k"]), "precision": r["precision"]},
            )
            write_record(rec, folder / f"{r['model']}-k{r['k']}-{r['precision']}.json")
    return results


if __name__ == "__main__":
    main()
