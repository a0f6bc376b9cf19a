"""The VAE detector at a fixed divergence threshold of 0.3, beside its 5 %-FPR threshold.

The write-up this project serves detected adversarial MNIST examples with a convolutional VAE
(2-D latent) and "a divergence between input and reconstruction" above 0.3, reporting 99-100 %
detection. This script checks that claim on a stored model and the defense sweep's stored VAE
(:class:`defenses.vae_defense.VAEDetectorDefense`, CPU preset by default):

* the divergences between the classifier's softmax on the input and on its reconstruction
  (T = 1, the plain softmax): Jensen-Shannon (at most ln 2 = 0.693 nats) and KL(P || Q);
* for each attack (FGSM eps 0.3, PGD 40 x 0.01 in the 0.3 ball, C&W L2 5 x 200 from c = 1e-2,
  stAdv at tau 0.05, kappa 0 (the default attack), DeepFool L2 (untargeted), JSMA) on the
  first ``--n-images`` test images with one random target each (seed 0): the share of its
  successful adversarial examples above 0.3 for each divergence, and the share the library's
  detector flags at its threshold (5 % FPR on clean validation images from the training split);
* the false-positive rate of each rule on the first ``--n-clean`` clean test images.

A fixed threshold has no false-positive rate of its own: both are reported, since detection
at 0.3 is only meaningful beside the share of clean images 0.3 flags.

    python benchmarks/detector_threshold.py --model A --n-images 100 --record results/detector-threshold
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defenses.base import DefenseContext
from defenses.vae_defense import VAEDetectorDefense
from defenses.vae_detector import VAEDetector, jensen_shannon
from stadv.data import load_tensors
from stadv.metrics import wilson_interval
from stadv.records import make_record, write_record
from stadv.registry import attack_class
from stadv.store import load_pretrained

#: Each attack's options (the defense sweep's CPU preset).
ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "fgsm": {"epsilon": 0.3},
    "pgd": {"epsilon": 0.3, "alpha": 0.01, "steps": 40},
    "cw": {"binary_search_steps": 5, "max_iterations": 200, "initial_const": 1e-2},
    "stadv": {"tau": 0.05, "kappa": 0.0},
    "deepfool": {"norm": "l2", "overshoot": 0.02, "max_iterations": 50},
    "jsma": {"theta": 1.0, "gamma": 0.145},
}
UNTARGETED = ("deepfool",)
#: The detector rules compared: name -> what the table calls it.
RULES = {
    "jsd_t1": "JSD (T = 1) > 0.3",
    "kl_t1": "KL (T = 1) > 0.3",
    "detector": "detector at 5 % FPR",
}


def divergences(detector: VAEDetector, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """JSD and KL(P || Q) (N,) between the classifier's softmax (T = 1) on ``images`` (P) and
    on their VAE reconstructions (Q), in nats."""
    out: dict[str, list[torch.Tensor]] = {"jsd_t1": [], "kl_t1": []}
    with torch.no_grad():
        for s in range(0, images.shape[0], 500):
            x = images[s : s + 500]
            logp = F.log_softmax(detector.classifier(x), dim=1)
            logq = F.log_softmax(detector.classifier(detector.vae(x)), dim=1)
            out["jsd_t1"].append(jensen_shannon(logp.exp(), logq.exp()))
            out["kl_t1"].append((logp.exp() * (logp - logq)).sum(dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def flags(detector: VAEDetector, images: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Bool (N,) per rule of :data:`RULES`."""
    div = divergences(detector, images)
    out = {k: v > threshold for k, v in div.items()}
    out["detector"] = detector.detect(images)
    return out


def _rate(hits: torch.Tensor) -> dict[str, float]:
    n, k = int(hits.numel()), int(hits.sum())
    low, high = wilson_interval(k, n)
    return {"rate": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n, "k": k}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="A", choices=["A", "B", "C"], help="stored model [A]")
    p.add_argument("--n-images", type=int, default=100, help="test images attacked [100]")
    p.add_argument("--n-clean", type=int, default=1000, help="clean test images for FPR [1000]")
    p.add_argument("--threshold", type=float, default=0.3, help="the fixed threshold [0.3]")
    p.add_argument("--attacks", nargs="+", default=list(ATTACK_OPTIONS), choices=ATTACK_OPTIONS)
    p.add_argument("--variant", default="cpu", help="the stored VAE's preset suffix [cpu]")
    p.add_argument("--vae-epochs", type=int, default=5, help="as the stored VAE's [5]")
    p.add_argument(
        "--train-limit", type=int, default=None, help="as the VAE's [None: all training images]"
    )
    p.add_argument("--n-validation", type=int, default=1000, help="as the VAE's [1000]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--store", default=None, help="model store (default ~/.cache/stadv/models)")
    p.add_argument("--data-dir", default=None, help="data root (default: the library's)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--record", default=None, help="write one record per attack into this folder")
    args = p.parse_args(argv)
    for name in ("n_images", "n_clean", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.threshold) and args.threshold > 0):
        p.error(f"--threshold must be a finite number > 0, got {args.threshold}")
    return args


def build_detector(args: argparse.Namespace, model: nn.Module) -> VAEDetector:
    """The stored VAE (never trained here) with its threshold fitted on validation images."""
    made = VAEDetectorDefense(
        epochs=args.vae_epochs, train_limit=args.train_limit, n_validation=args.n_validation
    )
    ctx = DefenseContext(
        store=args.store, data_dir=args.data_dir, variant=args.variant, train=False
    )
    return made.detector(model, ctx)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model, dataset="mnist", store=args.store, data_dir=args.data_dir)
    model = model.cpu().eval()
    detector = build_detector(args, model)
    test = load_tensors("mnist", split="test", data_dir=args.data_dir)
    clean = flags(detector, test.images[: args.n_clean], args.threshold)
    fpr = {rule: _rate(hit) for rule, hit in clean.items()}
    x, y = test.images[: args.n_images], test.labels[: args.n_images]
    rows = []
    head = f"{'attack':9} {'success':>9} " + " ".join(f"{r:>22}" for r in RULES)
    print(
        f"clean FPR ({args.n_clean} test images): "
        + ", ".join(f"{RULES[r]} {100 * v['rate']:.1f} %" for r, v in fpr.items())
    )
    print(head)
    for name in args.attacks:
        attack = attack_class(name)(**ATTACK_OPTIONS[name])
        start = time.perf_counter()
        result = attack(model, x, y, targets=None if name in UNTARGETED else "random")
        seconds = time.perf_counter() - start
        ok = result.success
        adv = result.adv_images[ok]
        hits = (
            flags(detector, adv, args.threshold)
            if adv.shape[0]
            else {r: torch.zeros(0, dtype=torch.bool) for r in RULES}
        )
        row = {
            "attack": name,
            "attacks": int(ok.numel()),
            "successes": int(ok.sum()),
            "seconds": seconds,
            "detection": {r: _rate(h) for r, h in hits.items()},
            "clean_fpr": fpr,
        }
        rows.append(row)
        cells = " ".join(f"{100 * row['detection'][r]['rate']:>21.1f}%" for r in RULES)
        print(f"{name:9} {row['successes']:>4}/{row['attacks']:<4} {cells}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if args.record:
        command = shlex.join(
            ["python", "benchmarks/detector_threshold.py", *(argv or sys.argv[1:])]
        )
        for row in rows:
            write_record(
                record(row, args, command), Path(args.record) / f"{args.model}-{row['attack']}.json"
            )
    return rows


def record(row: dict[str, Any], args: argparse.Namespace, command: str) -> Any:
    """One attack's record: detection at the fixed threshold (JSD, T = 1) over its successful
    adversarial examples; the other rules and every clean FPR in ``stats``."""
    main_rule = row["detection"]["jsd_t1"]
    stats: dict[str, float] = {"attacks": row["attacks"], "attack_successes": row["successes"]}
    for rule in RULES:
        for part, block in (
            ("detection", row["detection"][rule]),
            ("clean_fpr", row["clean_fpr"][rule]),
        ):
            for key in ("rate", "ci_low", "ci_high"):
                stats[f"{part}_{rule}_{key}"] = block[key]
    return make_record(
        what=(
            f"Share of {row['attack']}'s successful adversarial examples on MNIST Model "
            f"{args.model} whose input/reconstruction JSD (T = 1) exceeds {args.threshold}"
        ),
        command=command,
        n=main_rule["n"],
        successes=main_rule["k"],
        seconds=row["seconds"],
        stats=stats,
        tags={"model": args.model, "attack": row["attack"], "threshold": str(args.threshold)},
        notes=(
            f"first {args.n_images} test images, one random target each (DeepFool untargeted); "
            f"clean FPR on the first {args.n_clean} test images; VAE variant {args.variant!r} "
            f"({args.vae_epochs} epochs, first {args.train_limit or 'all'} training images, "
            f"{args.n_validation} held out for the 5 %-FPR threshold)"
        ),
    )


if __name__ == "__main__":
    main()
