"""Quick-model numbers for the new defenses: distillation, the VAE detector, PCL.

**These are quick-model numbers** (Model B trained on ``--n-train`` real MNIST training images
for ``--epochs`` epochs, attacks on ``--n-attack`` test images), for checking that each defense
behaves as its paper and its critics say, not the issue's measurements on fully trained models.

* Defensive distillation (Papernot et al. 2016) at T = ``--temperature``: clean accuracy, FGSM
  (epsilon 0.3) and C&W L2 (untargeted, on logits) success on the baseline and on the distilled
  student, and FGSM's zero-gradient count (the saturated softmax masks the gradient; C&W's
  margin on logits does not go through it, Carlini & Wagner 2017).
* The VAE detector (MagNet-style) protecting the baseline: threshold fitted on ``--n-validation``
  held-out *training* images at 5 % FPR; false-positive rate on clean test images, detection rate
  and ROC AUC against FGSM and PGD (epsilon 0.3) examples of the same test images; C&W
  (random targets) without and with knowledge of the detector (:class:`DetectorAwareModel`),
  as the rate of attacks that reach their target undetected.
* PCL (Mustafa et al. 2019), without PGD: clean accuracy and FGSM / PGD success.

Rates come with Wilson 95 % intervals. ``--json PATH`` writes everything with the environment.

    python benchmarks/new_defenses.py --json new_defenses.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from defenses.distillation import train_distilled
from defenses.prototype import train_pcl
from defenses.vae_detector import (
    VAEDetector,
    attack_knowing_detector,
    roc_auc,
    train_vae,
    validation_split,
)
from stadv.cw import CarliniWagnerL2
from stadv.data import load_tensors
from stadv.fgsm import FGSM
from stadv.metrics import wilson_interval
from stadv.models import build_model
from stadv.pgd import PGD
from stadv.train import evaluate, train_model


def rate(hits: torch.Tensor) -> dict[str, float]:
    """``{"rate", "ci_low", "ci_high", "n"}`` of a bool tensor."""
    n, k = int(hits.numel()), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": float(n)}


def fmt(r: dict[str, float]) -> str:
    return f"{100 * r['rate']:5.1f} % [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--data-dir", default=None, help="MNIST root (default $STADV_DATA_DIR)")
    p.add_argument("--n-train", type=int, default=2000, help="training images [2000]")
    p.add_argument("--n-validation", type=int, default=500, help="held-out training images")
    p.add_argument("--epochs", type=int, default=1, help="epochs of every model [1]")
    p.add_argument("--temperature", type=float, default=100.0)
    p.add_argument("--distill-lr", type=float, default=1e-2, help="Adam's rate at T [1e-2]")
    p.add_argument("--vae-epochs", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=2, help="the VAE's latent dimension [2]")
    p.add_argument("--n-attack", type=int, default=30, help="test images attacked [30]")
    p.add_argument("--n-clean", type=int, default=500, help="test images for accuracy / FPR")
    p.add_argument("--cw-steps", type=int, default=5, help="C&W binary search steps [5]")
    p.add_argument("--cw-iterations", type=int, default=200, help="C&W Adam steps [200]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-pcl", action="store_true")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in (
        "n_train",
        "n_validation",
        "epochs",
        "vae_epochs",
        "latent_dim",
        "n_attack",
        "n_clean",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def attack_rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cw: CarliniWagnerL2
) -> dict[str, Any]:
    fgsm = FGSM(epsilon=0.3, check=False)(model, x, y)
    c = cw(model, x, y)
    ok = c.success
    return {
        "fgsm_success": rate(fgsm.success),
        "fgsm_zero_gradients": fgsm.extra["zero_gradients"],
        "cw_success": rate(ok),
        "cw_mean_l2_successful": float(c.l2[ok].mean()) if bool(ok.any()) else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_all = load_tensors("mnist", split="train", data_dir=args.data_dir)
    test = load_tensors("mnist", split="test", data_dir=args.data_dir)
    fit, validation = validation_split(
        train_all.slice(0, args.n_train + args.n_validation), args.n_validation
    )
    clean = test.slice(0, args.n_clean)
    xa, ya = test.images[: args.n_attack], test.labels[: args.n_attack]
    cw = CarliniWagnerL2(
        binary_search_steps=args.cw_steps,
        max_iterations=args.cw_iterations,
        learning_rate=0.1,
        initial_const=1.0,
        check=False,
    )
    report: dict[str, Any] = {}

    # -- baseline and distillation ------------------------------------------------------------
    torch.manual_seed(args.seed)
    base = build_model("B")
    train_model(base, fit, epochs=args.epochs, seed=args.seed, progress=False)
    student, dist = train_distilled(
        "B",
        fit,
        temperature=args.temperature,
        epochs=args.epochs,
        lr=args.distill_lr,
        seed=args.seed,
    )
    for name, model in (("baseline", base), ("distilled", student)):
        with torch.no_grad():
            z = model(xa)
        report[name] = {
            "clean_accuracy": evaluate(model, clean),
            "median_logit_spread": float((z.amax(1) - z.amin(1)).median()),
            **attack_rows(model, xa, ya, cw),
        }
    report["distilled"]["student_losses"] = list(dist.student.losses)

    # -- the VAE detector, protecting the baseline ------------------------------------------
    vae, vae_report = train_vae(
        fit, latent_dim=args.latent_dim, epochs=args.vae_epochs, lr=3e-3, seed=args.seed
    )
    detector = VAEDetector(vae, base, temperature=10.0)
    threshold = detector.fit_threshold(validation.images, fpr=0.05)
    clean_scores = detector.scores(clean.images)
    det: dict[str, Any] = {
        "threshold": threshold,
        "fitted_on": detector.fitted_on,
        "vae_losses": list(vae_report.losses),
        "fpr_validation": detector.fitted_on["fpr"],
        "fpr_test": rate(clean_scores > threshold),
    }
    for name, attack in (
        ("fgsm", FGSM(epsilon=0.3, check=False)),
        ("pgd", PGD(epsilon=0.3, alpha=0.01, steps=40, check=False)),
    ):
        adv = attack(base, clean.images, clean.labels)
        scores = detector.scores(adv.adv_images)
        det[name] = {
            "attack_success": rate(adv.success),
            "roc_auc": roc_auc(clean_scores, scores),
            "detection_rate": rate(scores > threshold),
            "detection_rate_successful": rate((scores > threshold)[adv.success]),
        }
    gen = torch.Generator().manual_seed(args.seed)
    targets = (ya + torch.randint(1, 10, ya.shape, generator=gen)) % 10
    plain = cw(base, xa, ya, targets)
    plain_evaded = plain.success & ~detector.detect(plain.adv_images)
    knowing = attack_knowing_detector(cw, detector, xa, ya, targets)
    det["cw_plain"] = {
        "success": rate(plain.success),
        "undetected_success": rate(plain_evaded),
    }
    det["cw_knowing_detector"] = {
        "undetected_success": rate(knowing.evaded),
        "detected": rate(knowing.detected),
        "mean_l2_evaded": float(knowing.result.l2[knowing.evaded].mean())
        if bool(knowing.evaded.any())
        else float("nan"),
    }
    report["vae_detector"] = det

    # -- PCL --------------------------------------------------------------------------------
    if not args.skip_pcl:
        pcl, pcl_report = train_pcl(
            "B", fit, warmup_epochs=args.epochs, epochs=args.epochs, seed=args.seed
        )
        model = pcl.classifier
        pgd = PGD(epsilon=0.3, alpha=0.01, steps=40, check=False)(model, xa, ya)
        report["pcl"] = {
            "clean_accuracy": evaluate(model, clean),
            "fgsm_success": rate(FGSM(epsilon=0.3, check=False)(model, xa, ya).success),
            "pgd_success": rate(pgd.success),
            "pcl_losses": list(pcl_report.pcl.losses),
        }
        base_pgd = PGD(epsilon=0.3, alpha=0.01, steps=40, check=False)(base, xa, ya)
        report["baseline"]["pgd_success"] = rate(base_pgd.success)

    report["environment"] = {
        "note": "quick-model numbers (Model B, few images, short training), not the issue's",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - start,
        **{k: v for k, v in vars(args).items() if k != "json"},
    }
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_table(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(
        f"QUICK-MODEL NUMBERS: Model B, {env['n_train']} training images, {env['epochs']} "
        f"epoch(s); attacks on {env['n_attack']} test images, accuracy/FPR on {env['n_clean']}."
    )
    print(f"{'model':<11} {'clean acc':>9}  {'FGSM success':<24} {'zero grads':>10}  C&W success")
    for name in ("baseline", "distilled"):
        r = report[name]
        print(
            f"{name:<11} {100 * r['clean_accuracy']:8.1f}%  {fmt(r['fgsm_success']):<24} "
            f"{r['fgsm_zero_gradients']:>10}  {fmt(r['cw_success'])}"
        )
    d = report["vae_detector"]
    print(
        f"VAE detector (latent {env['latent_dim']}): threshold {d['threshold']:.3f} from {d['fitted_on']['images']} validation "
        f"images (FPR there {100 * d['fpr_validation']:.1f} %); test FPR {fmt(d['fpr_test'])}"
    )
    for name in ("fgsm", "pgd"):
        r = d[name]
        print(
            f"  {name:<5} ROC AUC {r['roc_auc']:.3f}  detected {fmt(r['detection_rate'])}  "
            f"attack success {fmt(r['attack_success'])}"
        )
    print(f"  C&W plain:           undetected success {fmt(d['cw_plain']['undetected_success'])}")
    print(
        f"  C&W knowing detector: undetected success "
        f"{fmt(d['cw_knowing_detector']['undetected_success'])}"
    )
    if "pcl" in report:
        p = report["pcl"]
        print(
            f"PCL: clean {100 * p['clean_accuracy']:.1f} %, FGSM {fmt(p['fgsm_success'])}, "
            f"PGD {fmt(p['pgd_success'])} (baseline PGD {fmt(report['baseline']['pgd_success'])})"
        )


if __name__ == "__main__":
    main()
