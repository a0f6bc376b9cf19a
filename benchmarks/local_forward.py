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

On Model B, where ``LocalForward`` runs the whole model (every pixel reaches all of the second
convolution), it also times :class:`SparseSecondConv`, an experiment kept here and not in
``stadv``: the second convolution computed from the first layer's change alone (columns
``sparse ms/1k`` and ``sparse x``; keys ``sparse_*`` in the JSON and the records).
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
from stadv.local_forward import LocalForward, _out_box
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


class SparseSecondConv:
    """Logits of few-pixel candidates with the second convolution computed from the change of
    the first layer's output alone (Model B's shape: two or more convolution stages, the
    second with stride s, no padding and a kernel divisible by s).

    The first stage runs on each pixel's box (:meth:`LocalForward._pyramid`); its change
    d = relu(a') - relu(a) is nonzero on those boxes only (a position in two boxes counts in
    the first), so conv2(a') = conv2(a) + conv2(d), and conv2(d) needs, per changed position
    R, only the taps u = R - s j of the outputs j that read it: one matrix product per residue
    class of R mod s (taps u = R mod s + s i), scattered into the outputs by ``index_add_``.
    The stages after the second and the tail run whole.
    """

    def __init__(self, net: torch.nn.Module, clean: torch.Tensor) -> None:
        self.local = LocalForward(net, clean)
        stages = self.local.stages
        if len(stages) < 2:
            raise ValueError(f"SparseSecondConv needs two convolution stages, got {len(stages)}")
        self.first, self.second, self.rest = stages[0], stages[1], stages[2:]
        conv = self.second.conv
        (s, s2), (kh, kw) = conv.stride, conv.kernel_size
        if s != s2 or kh % s or kw % s or any(conv.padding):
            raise ValueError(f"SparseSecondConv needs stride | kernel and no padding; got {conv!r}")
        self.s, self.taps = s, (kh // s, kw // s)
        c_in = conv.in_channels
        # per residue (rr, rc): (C_in, taps_h * taps_w * C_out), taps u = rr + s i, v = rc + s j
        self.weights = {
            (rr, rc): conv.weight[:, :, rr::s, rc::s].permute(1, 2, 3, 0).reshape(c_in, -1)
            for rr in range(s)
            for rc in range(s)
        }
        with torch.no_grad():
            a = clean
            for m in self.local.pre:
                a = m(a)
            a = self.first.conv(a)
            for m in self.first.after:
                a = m(a)
            self.a1 = a  # (P, C_in, H1, W1) after the first stage
            self.z2 = conv(a)  # (P, C_out, H2, W2) before the second stage's activation

    def __call__(
        self, images: torch.Tensor, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            return self._logits(images, owner, rows, cols)

    def _logits(
        self, images: torch.Tensor, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        n, k = rows.shape
        c1 = self.first.conv
        h, w = self.local._sizes[0]
        who = torch.arange(n).repeat_interleave(k)
        pixels = (rows.reshape(-1), cols.reshape(-1), 1, 1)
        r, oh, _ = _out_box(pixels[0], 1, c1, 0, h)
        c, ow, _ = _out_box(pixels[1], 1, c1, 1, w)
        new = self.local._pyramid(images, who, [pixels, (r, c, oh, ow)])  # (N k, C_in, oh, ow)
        ri = r[:, None] + torch.arange(oh)
        ci = c[:, None] + torch.arange(ow)
        old = self.a1[owner[who][:, None, None], :, ri[:, :, None], ci[:, None, :]]
        d = new - old.permute(0, 3, 1, 2).to(new.dtype)  # (N k, C_in, oh, ow)
        if k > 1:  # a position also in an earlier pixel's box is counted there
            br, bc = r.view(n, k, 1, 1), c.view(n, k, 1, 1)
            pr, pc = ri.view(n, k, oh, 1), ci.view(n, k, 1, ow)
            seen = torch.zeros(n, k, oh, ow, dtype=torch.bool)
            for j in range(1, k):
                for i in range(j):
                    inside_r = (pr[:, j] >= br[:, i]) & (pr[:, j] < br[:, i] + oh)
                    inside_c = (pc[:, j] >= bc[:, i]) & (pc[:, j] < bc[:, i] + ow)
                    seen[:, j] |= inside_r & inside_c
            d = d * (~seen).view(n * k, 1, oh, ow).to(d.dtype)
        x = d.permute(0, 2, 3, 1).reshape(-1, d.shape[1])  # (N k oh ow, C_in)
        pos_r = ri[:, :, None].expand(-1, oh, ow).reshape(-1)
        pos_c = ci[:, None, :].expand(-1, oh, ow).reshape(-1)
        pos_n = who[:, None].expand(-1, oh * ow).reshape(-1)
        _, c_out, h2, w2 = self.z2.shape
        out = x.new_zeros(n * h2 * w2 + 1, c_out)  # the last row takes taps outside the output
        th, tw = self.taps
        for (rr, rc), weight in self.weights.items():
            sel = ((pos_r % self.s == rr) & (pos_c % self.s == rc)).nonzero().flatten()
            y = (x[sel] @ weight.to(x.dtype)).view(-1, th, tw, c_out)
            jr = (pos_r[sel] - rr).div(self.s, rounding_mode="floor")[:, None] - torch.arange(th)
            jc = (pos_c[sel] - rc).div(self.s, rounding_mode="floor")[:, None] - torch.arange(tw)
            ok = ((jr >= 0) & (jr < h2))[:, :, None] & ((jc >= 0) & (jc < w2))[:, None, :]
            at = pos_n[sel, None, None] * (h2 * w2) + jr[:, :, None] * w2 + jc[:, None, :]
            at = torch.where(ok, at, n * h2 * w2)
            out.index_add_(0, at.reshape(-1), y.reshape(-1, c_out).to(out.dtype))
        a = self.z2[owner] + out[:-1].view(n, h2, w2, c_out).permute(0, 3, 1, 2).to(self.z2.dtype)
        for m in self.second.after:
            a = m(a)
        for stage in self.rest:
            a = stage.conv(a)
            for m in stage.after:
                a = m(a)
        for m in self.local.tail:
            a = m(a)
        return a


def measure(
    net: torch.nn.Module, clean: torch.Tensor, k: int, n: int, repeats: int, sparse: bool = False
) -> list[dict[str, Any]]:
    """The rows (one per precision) for ``k`` pixels on ``n`` candidates; with ``sparse``
    also :class:`SparseSecondConv`'s time and largest logit difference (keys ``sparse_*``)."""
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
    sparse_fwd = SparseSecondConv(net, clean) if sparse else None
    step = CPU_MAX_BATCH
    total = images.shape[0]

    def whole() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(images[i : i + step]) for i in range(0, total, step)])

    def chunks(fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            sl = [slice(i, i + step) for i in range(0, total, step)]
            return torch.cat([fn(images[s], owner[s], rows[s], cols[s]) for s in sl])

        return run

    out = []
    for precision in PRECISIONS:
        extra: dict[str, Any] = {}
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            full_ms, want = cpu_ms(whole, repeats)
            local_ms, got = cpu_ms(chunks(fwd), repeats)
            if sparse_fwd is not None:
                sparse_ms, other = cpu_ms(chunks(sparse_fwd), repeats)
                extra = {
                    "sparse_ms_per_1000": sparse_ms * 1000 / total,
                    "sparse_speedup": full_ms / sparse_ms,
                    "sparse_max_logit_difference": float(
                        (want.float() - other.float()).abs().max()
                    ),
                }
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
                **extra,
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
            for row in measure(net, clean, k, args.candidates, args.repeats, sparse=name == "B"):
                results.append({"model": name, **row})
    head = f"{'model':<6}{'k':>3} {'precision':<10}{'local':>6}{'model ms/1k':>13}"
    print(head + f"{'local ms/1k':>13}{'speedup':>9}{'max |dlogit|':>14}", end="")
    print(f"{'sparse ms/1k':>15}{'sparse x':>10}" if "B" in args.models else "")
    for r in results:
        print(
            f"{r['model']:<6}{r['k']:>3} {r['precision']:<10}{'yes' if r['local_path'] else 'no':>6}"
            f"{r['model_ms_per_1000']:>13.1f}{r['local_ms_per_1000']:>13.1f}"
            f"{r['speedup']:>8.2f}x{r['max_logit_difference']:>14.2e}"
            + (
                f"{r['sparse_ms_per_1000']:>15.1f}{r['sparse_speedup']:>9.2f}x"
                if "sparse_speedup" in r
                else ""
            )
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
