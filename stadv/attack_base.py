"""What every attack's call shares: the prepared batch, the result record, pixel-attack helpers.

* :func:`attack_batch`: the shared start of an attack call, as a context manager: timer, input
  checks (:func:`check_inputs`), :func:`~stadv.model_mode.prepared_model`, the attack's
  :func:`~stadv.precision.precision_policy`,
  :func:`~stadv.sanity.check_model`, :func:`~stadv.targets.expand_targets`. It yields an
  :class:`AttackBatch`, whose :meth:`AttackBatch.finish` builds the result.
* :func:`finalize_result`: builds an :class:`~stadv.result.AttackResult` from adversarial
  images, always from the model's own prediction on them.
* :class:`PixelAttack`: base of the pixel-space attacks (FGSM, PGD, C&W), whose ``__call__``
  runs :func:`attack_batch` and hands the batch to the attack; :func:`check_attack_fields`
  checks the fields they share.
* :func:`loss_ascent_gradient`, :func:`count_zero_gradients`: the cross-entropy input gradient
  the gradient-sign attacks step along, and how many samples had none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from stadv.margin import margin_loss
from stadv.model_mode import prepared_model
from stadv.options import check_bounds, check_int
from stadv.precision import (
    Precision,
    check_precision,
    float32_logits,
    precision_policy_unchecked,
)
from stadv.result import AttackResult
from stadv.sanity import check_model
from stadv.targets import TargetSpec, expand_targets


def _per_sample(value: int | torch.Tensor, m: int, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        out = value.to(device=device, dtype=torch.int64).reshape(-1)
        if out.numel() == 1 and m != 1:
            out = out.expand(m).clone()
        if out.shape != (m,):
            raise ValueError(f"expected {m} per-sample counts, got shape {tuple(value.shape)}")
        return out
    return torch.full((m,), int(value), dtype=torch.int64, device=device)


def finalize_result(
    model: nn.Module,
    *,
    adv_images: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    source_index: torch.Tensor,
    iterations: int | torch.Tensor,
    evaluations: int | torch.Tensor,
    stop_reason: str | Sequence[str],
    seconds: float,
    flows: torch.Tensor | None = None,
    flow_loss: torch.Tensor | None = None,
    extra: dict[str, Any] | None = None,
    batch_size: int = 1024,
) -> AttackResult:
    """The :class:`~stadv.result.AttackResult` of ``adv_images``, judged by ``model`` itself.

    Success, predictions and margin come from one forward pass on ``adv_images`` (in eval mode,
    without gradients; the caller's mode is restored), so ``success`` always agrees with the
    model. The pass is strict fp32 (:func:`~stadv.precision.precision_policy`) whatever policy
    the attack searched under, so TF32's rounding never enters the verdict. Targeted:
    ``success = pred == target``; untargeted: ``pred != label``. No margin
    enters the reported mask: an attack's own acceptance test (stAdv's ``success_margin``) is
    a hysteresis below this one, so the mask cannot disagree with the model's prediction
    however the returned images are batched (issue 21). ``margin`` is reported beside it.

    Args:
        model: the attacked logits model.
        adv_images: (M, C, H, W) returned images. images: (M, C, H, W) their sources (one row
            per attack, as :func:`stadv.targets.expand_targets` returns them).
        labels, targets, source_index: (M,) each (targets None for untargeted attacks).
        iterations, evaluations: per-attack counts (M,) or one int for all.
        stop_reason: one string per attack, or one string for all.
        seconds: wall time of the whole attack call.
        flows, flow_loss: stAdv's flow fields and L_flow (None for pixel attacks).
        extra: free-form details (attack name, hyper-parameters).
        batch_size: forward-pass chunk size [1024]; does not change the result.
    """
    m = adv_images.shape[0]
    if images.shape != adv_images.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and adv_images {tuple(adv_images.shape)} differ in shape"
        )
    device = adv_images.device
    adv = adv_images.detach()
    with prepared_model(model) as net, torch.no_grad(), precision_policy_unchecked("fp32"):
        chunks = [net(adv[s : s + batch_size]) for s in range(0, m, batch_size)]
    if chunks:
        logits = torch.cat(chunks)
    else:
        logits = adv.new_zeros((0, 2))
    y = labels.to(device=device, dtype=torch.int64)
    t = None if targets is None else targets.to(device=device, dtype=torch.int64)
    pred = logits.argmax(dim=1)
    success = pred == t if t is not None else pred != y
    margin = margin_loss(logits, y, t) if m else adv.new_zeros(0)
    diff = (adv - images.detach().to(device)).flatten(1)
    if isinstance(stop_reason, str):
        reasons: tuple[str, ...] = (stop_reason,) * m
    else:
        reasons = tuple(stop_reason)
        if len(reasons) != m:
            raise ValueError(f"expected {m} stop reasons, got {len(reasons)}")
    return AttackResult(
        adv_images=adv,
        success=success,
        predictions=pred,
        labels=y,
        targets=t,
        source_index=source_index.to(device=device, dtype=torch.int64),
        iterations=_per_sample(iterations, m, device),
        evaluations=_per_sample(evaluations, m, device),
        margin=margin,
        l2=diff.norm(p=2, dim=1) if m else adv.new_zeros(0),
        linf=diff.abs().amax(dim=1) if m else adv.new_zeros(0),
        seconds=float(seconds),
        stop_reason=reasons,
        flows=None if flows is None else flows.detach(),
        flow_loss=None if flow_loss is None else flow_loss.detach(),
        extra=dict(extra or {}),
    )


class CallSettings(Protocol):
    """The fields :func:`attack_batch` reads from an attack: ``num_classes``, ``seed`` (an int,
    or None where the attack allows it; the target protocols then use 0), ``check`` and
    ``precision`` (:mod:`stadv.precision`)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def seed(self) -> int | None: ...

    @property
    def check(self) -> bool: ...

    @property
    def precision(self) -> str: ...


@dataclass(frozen=True)
class AttackBatch:
    """One attack call's prepared batch, as :func:`attack_batch` yields it.

    ``net`` is the model in attack mode; ``images``, ``labels``, ``targets`` and
    ``source_index`` are one row per attack (:func:`stadv.targets.expand_targets`); ``start`` is
    the call's :func:`time.perf_counter` at entry.
    """

    net: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    source_index: torch.Tensor
    start: float

    def finish(
        self,
        adv_images: torch.Tensor,
        *,
        iterations: int | torch.Tensor,
        evaluations: int | torch.Tensor,
        stop_reason: str | Sequence[str],
        extra: dict[str, Any],
        flows: torch.Tensor | None = None,
        flow_loss: torch.Tensor | None = None,
    ) -> AttackResult:
        """:func:`finalize_result` of ``adv_images`` for this batch, timed from ``start``.

        ``flows`` and ``flow_loss`` (stAdv's flow fields (M, 2, H, W) and L_flow (M,)) are
        passed on as they are (see :func:`finalize_result`).
        """
        return finalize_result(
            self.net,
            adv_images=adv_images,
            images=self.images,
            labels=self.labels,
            targets=self.targets,
            source_index=self.source_index,
            iterations=iterations,
            evaluations=evaluations,
            stop_reason=stop_reason,
            seconds=time.perf_counter() - self.start,
            flows=flows,
            flow_loss=flow_loss,
            extra=extra,
        )


@contextmanager
def attack_batch(
    attack: CallSettings,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: TargetSpec,
    *,
    bounds: tuple[float, float] | None = None,
    device: torch.device | None = None,
) -> Iterator[AttackBatch]:
    """The shared start of an attack's call, as a context manager.

    Starts the timer, validates the inputs (:func:`check_inputs`; their range against
    ``bounds`` unless it is None), detaches them and moves them to ``device`` (None: where they
    are), enters :func:`~stadv.model_mode.prepared_model`, warns about a suspicious model on the
    first 8 images when ``attack.check`` (:func:`stadv.sanity.check_model`) and expands the
    targets (:func:`stadv.targets.expand_targets` with ``attack.num_classes`` and
    ``attack.seed``, 0 where it is None), both in strict fp32 so the targets never depend on the
    policy, then enters ``attack.precision``'s :func:`~stadv.precision.precision_policy` (both
    restored on exit; every search evaluation runs inside, the fp32 verdict of
    :meth:`AttackBatch.finish` excepted). ``batch.net`` returns fp32 logits under every policy
    (:func:`~stadv.precision.float32_logits`).

    Example::

        >>> with attack_batch(self, model, images, labels, targets, bounds=(0.0, 1.0)) as batch:
        ...     adv = step(batch.net, batch.images, batch.labels, batch.targets)
        ...     result = batch.finish(adv, iterations=1, evaluations=1,
        ...                           stop_reason="single_step", extra={})
    """
    start = time.perf_counter()
    check_inputs(images, labels, bounds)
    dev = images.device if device is None else device
    x0 = images.detach().to(dev)
    y0 = labels.detach().to(dev)
    with prepared_model(model) as net:
        with precision_policy_unchecked("fp32"):
            if attack.check and x0.shape[0]:
                check_model(net, x0[:8])
            seed = 0 if attack.seed is None else attack.seed
            x, y, t, src = expand_targets(
                net, x0, y0, targets, num_classes=attack.num_classes, seed=seed
            )
        with precision_policy_unchecked(attack.precision):
            searched = float32_logits(net, attack.precision)
            yield AttackBatch(searched, x, y, t, src, start)


class PixelAttack:
    """Base of the pixel-space attacks (FGSM, PGD, C&W): their shared ``__call__``.

    A subclass is a frozen dataclass with the fields ``bounds``, ``num_classes``, ``seed`` (an
    int, or None where the attack allows it; the target protocols then use 0) and ``check``,
    the class variables ``name`` (its :data:`stadv.registry.ATTACKS` key) and ``label`` (how
    tables name it), and implements :meth:`_attack`.

    Call: ``attack(model, images, labels, targets=None) -> AttackResult``: runs
    :func:`attack_batch` (inputs checked against ``bounds``) and, inside it (model in attack
    mode), returns ``_attack(batch)``.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    bounds: tuple[float, float]
    num_classes: int
    seed: int | None
    check: bool
    precision: Precision

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult:
        with attack_batch(self, model, images, labels, targets, bounds=self.bounds) as batch:
            return self._attack(batch)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        """The attack proper on the prepared ``batch``; returns ``batch.finish(...)``."""
        raise NotImplementedError


def check_attack_fields(attack: PixelAttack) -> None:
    """Checks the fields every pixel-space attack has: ``bounds`` (normalised in place on the
    frozen dataclass, :func:`check_bounds`), ``num_classes`` (>= 2), ``seed`` (>= 0, or
    None where the attack allows it) and ``precision`` (:func:`~stadv.precision.check_precision`)."""
    object.__setattr__(attack, "bounds", check_bounds(attack.bounds))
    check_precision(attack.precision)
    check_int("num_classes", attack.num_classes, low=2)
    if attack.seed is not None:
        check_int("seed", attack.seed, low=0)


def check_inputs(
    images: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] | None
) -> None:
    """Shape and dtype checks shared by the attacks, and the range check against ``bounds``
    (skipped when it is None)."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be a floating-point tensor, got {images.dtype}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if (
        bounds is not None
        and images.numel()
        and (float(images.min()) < bounds[0] or float(images.max()) > bounds[1])
    ):
        raise ValueError(
            f"images must lie in bounds {bounds}, "
            f"got values in [{float(images.min())}, {float(images.max())}]"
        )


def loss_ascent_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
) -> torch.Tensor:
    """Gradient (M, C, H, W) of the attacker's cross-entropy objective at ``images``.

    Untargeted: ``grad_x CE(Z(x), y)`` (ascend the true label's loss); targeted:
    ``-grad_x CE(Z(x), t)`` (descend the target's loss), so an attack always steps *along* it.
    The loss is summed over samples, so each row's gradient is independent of the batch.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if targets is None:
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        else:
            loss = -torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


def count_zero_gradients(grad: torch.Tensor) -> int:
    """Number of samples whose input gradient is identically zero (gradient masking, saturation)."""
    if grad.numel() == 0:
        return 0
    return int((grad.reshape(grad.shape[0], -1).abs().amax(dim=1) == 0).sum())
