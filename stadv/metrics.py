"""Metrics of an attack run, reported the AutoAttack way.

Definitions (the ones we report):

* **targeted success rate** = fraction of (image, target) attacks whose adversarial image the
  model classifies as the target. With ``targets="all"`` on MNIST that is over 9 attacks per
  image (the paper's 90,000-attack protocol on the full test set). Images the model already
  misclassifies are attacked and counted like the others.
* **untargeted success rate** = fraction of attacks whose adversarial image is classified as
  anything but the true label (for a targeted run: the "fooled" rate, which earlier
  reproductions sometimes reported as if it were targeted success).
* 95 % intervals are Wilson score intervals.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from stadv.result import AttackResult


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95 %). ``n = 0`` gives (nan, nan).

    The bound on the side of an observed 0 or n is exact (0.0 or 1.0), not a rounding residue of
    ``centre - half``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def _mean(t: torch.Tensor | None) -> float:
    if t is None or t.numel() == 0:
        return float("nan")
    return float(t.double().mean())


def _median(t: torch.Tensor | None) -> float:
    if t is None or t.numel() == 0:
        return float("nan")
    return float(t.double().median())


#: Per-attack statistics an attack may return in ``extra`` (each (M,)), summarised as mean,
#: mean over the successful attacks and max: DeepFool's ``rho`` (||r||_2 / ||x||_2, the paper's
#: rho_adv), JSMA's ``changed_fraction`` (of the features), few-pixel's ``pixels_changed``.
PER_ATTACK_STATISTICS = ("rho", "changed_fraction", "pixels_changed")


def summarize(result: AttackResult) -> dict[str, float]:
    """One flat dict of real numbers for a run (success with Wilson intervals, distances, cost)."""
    n = len(result)
    fooled = result.predictions != result.labels
    out: dict[str, float] = {"attacks": float(n), "seconds": float(result.seconds)}
    out["attacks_per_second"] = n / result.seconds if result.seconds > 0 else float("nan")
    if result.targeted:
        k = int(result.success.sum())
        lo, hi = wilson_interval(k, n)
        out.update(
            targeted_success_rate=k / n if n else float("nan"),
            targeted_success_ci_low=lo,
            targeted_success_ci_high=hi,
        )
    k_u = int(fooled.sum())
    lo_u, hi_u = wilson_interval(k_u, n)
    out.update(
        untargeted_success_rate=k_u / n if n else float("nan"),
        untargeted_success_ci_low=lo_u,
        untargeted_success_ci_high=hi_u,
    )
    ok = result.success
    out["mean_flow_loss"] = _mean(result.flow_loss)
    out["median_flow_loss"] = _median(result.flow_loss)
    out["mean_flow_loss_successful"] = _mean(
        result.flow_loss[ok] if result.flow_loss is not None else None
    )
    out["mean_l2"] = _mean(result.l2)
    out["median_l2"] = _median(result.l2)
    out["mean_linf"] = _mean(result.linf)
    out["mean_iterations"] = _mean(result.iterations.double())
    out["mean_evaluations"] = _mean(result.evaluations.double())
    out["nan_count"] = (
        float(int((~torch.isfinite(result.adv_images)).flatten(1).any(1).sum())) if n else 0.0
    )
    restarted = result.extra.get("restarted")
    if isinstance(restarted, list):  # stAdv: attacks re-solved per restart
        out["restarted_attacks"] = float(sum(restarted))
    for key in PER_ATTACK_STATISTICS:  # an attack's own per-attack statistic, where it has one
        value = result.extra.get(key)
        if isinstance(value, torch.Tensor) and value.shape == (n,):
            stat = value.double().cpu()
            out[f"mean_{key}"] = _mean(stat)
            out[f"mean_{key}_successful"] = _mean(stat[result.success.cpu()])
            out[f"max_{key}"] = float(stat.max()) if n else float("nan")
    if result.flows is not None and n:
        out["mean_abs_flow"] = float(result.flows.abs().double().mean())
        out["max_abs_flow"] = float(result.flows.abs().max())
    return out


def attack_table(result: AttackResult) -> pd.DataFrame:
    """One row per attack: source index, label, target, prediction, success and statistics."""
    n = len(result)
    data: dict[str, object] = {
        "source_index": result.source_index.cpu().numpy(),
        "label": result.labels.cpu().numpy(),
        "target": result.targets.cpu().numpy() if result.targets is not None else [-1] * n,
        "prediction": result.predictions.cpu().numpy(),
        "success": result.success.cpu().numpy(),
        "margin": result.margin.double().cpu().numpy(),
        "l2": result.l2.double().cpu().numpy(),
        "linf": result.linf.double().cpu().numpy(),
        "iterations": result.iterations.cpu().numpy(),
        "evaluations": result.evaluations.cpu().numpy(),
        "stop_reason": list(result.stop_reason) if len(result.stop_reason) == n else [""] * n,
    }
    if result.flow_loss is not None:
        data["flow_loss"] = result.flow_loss.double().cpu().numpy()
    return pd.DataFrame(data)


def target_prediction_matrix(result: AttackResult, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = target (or true label if untargeted), column = prediction."""
    rows = result.targets if result.targets is not None else result.labels
    idx = rows.cpu() * num_classes + result.predictions.cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def success_matrix(result: AttackResult, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) success rate: row = true class, column = target (NaN where none)."""
    if result.targets is None:
        raise ValueError("success_matrix needs a targeted result")
    idx = result.labels.cpu() * num_classes + result.targets.cpu()
    total = torch.bincount(idx, minlength=num_classes**2).double()
    hits = torch.bincount(idx, weights=result.success.cpu().double(), minlength=num_classes**2)
    rate = torch.where(total > 0, hits / total.clamp(min=1), torch.full_like(total, float("nan")))
    return rate.view(num_classes, num_classes)


def per_class_success(result: AttackResult, num_classes: int = 10) -> torch.Tensor:
    """(num_classes,) success rate by true class (NaN where a class has no attacks)."""
    labels = result.labels.cpu()
    total = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=result.success.cpu().double(), minlength=num_classes)
    return torch.where(total > 0, hits / total.clamp(min=1), torch.full_like(total, float("nan")))
