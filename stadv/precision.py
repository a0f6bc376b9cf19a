"""The precision policy of an attack's model evaluations: strict fp32, TF32 or bfloat16.

Why a policy: on Ampere and newer GPUs, PyTorch lets cuDNN convolutions use TF32 (10-bit
mantissa) by default, and matmuls when asked to. TF32 moves a model's logits by ~1e-3 to 1e-2,
more than stAdv's acceptance hysteresis (``success_margin`` 1e-3), so a success found under
TF32 could be a failure under strict fp32 and the other way round. An attack therefore runs
its search under an explicit, named policy (``precision``, default ``"fp32"``), and the verdict
on the returned images (:func:`stadv.attack_base.finalize_result`) is always taken in strict
fp32, whatever the search used: the reported success mask agrees with the model's fp32
prediction, and a lower precision can only make the search faster or its iterates rougher,
never the verdict different.

* ``"fp32"``: cuBLAS matmuls and cuDNN convolutions in IEEE fp32
  (``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.cudnn.conv.fp32_precision``
  ``"ieee"``: what ``allow_tf32 = False`` sets), no autocast;
* ``"tf32"``: both ``"tf32"``, no autocast;
* ``"bf16"``: the fp32 flags of ``"fp32"`` and :func:`torch.autocast` to bfloat16 on the CPU
  (and on CUDA where it is present): convolutions and matmuls in bfloat16 (8-bit mantissa),
  everything else in fp32. On this project's CPU a forward+backward pass of Models A and B
  takes half the fp32 time; the logits move by up to ~0.1 (``BF16_LOGIT_ERROR``).
  :func:`float32_logits` casts the model's output back to fp32 for the attack's arithmetic.

On a CPU ``"fp32"`` and ``"tf32"`` compute the same numbers (the flags are CUDA's).
:func:`precision_policy` sets the flags (and the autocast state) for the duration of a
``with`` block and restores the caller's afterwards, also when the block raises; nothing is
kept at module level.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal, get_args

import torch
from torch import nn

from stadv.options import check_choice

Precision = Literal["fp32", "tf32", "bf16"]

#: The policies, in the order a command line lists them.
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(value: object) -> Precision:
    """``value`` as a policy name; ``ValueError`` naming it and the allowed ones."""
    name = check_choice("precision", value, PRECISIONS)
    return "tf32" if name == "tf32" else "bf16" if name == "bf16" else "fp32"


@contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Evaluate models under ``precision`` (``"fp32"``, ``"tf32"`` or ``"bf16"``) inside the block.

    Sets ``torch.backends.cuda.matmul.fp32_precision`` and
    ``torch.backends.cudnn.conv.fp32_precision`` (``"ieee"`` or ``"tf32"``) and restores the
    caller's values on exit, normal or not. The value is checked before anything is changed.
    Why the per-backend settings of PyTorch >= 2.9 and not the older ``allow_tf32`` flags:
    PyTorch refuses to read the old flags once the two interfaces were mixed, while the new
    ones read back and restore exactly whichever interface the caller used (``allow_tf32``,
    :func:`torch.set_float32_matmul_precision`).
    """
    with precision_policy_unchecked(check_precision(precision)):
        yield


@contextmanager
def precision_policy_unchecked(precision: str) -> Iterator[None]:
    """:func:`precision_policy` of a value already checked (an attack's ``precision``,
    validated once at construction, as :func:`stadv.flow.warp_unchecked` takes its options):
    ``"tf32"`` is TF32, ``"bf16"`` bfloat16 autocast, anything else strict fp32. Autocast is
    switched on (``"bf16"``) or off (the others) for the CPU, and for CUDA where it is
    present, so a strict block inside a ``"bf16"`` one is strict."""
    mode = "tf32" if precision == "tf32" else "ieee"
    matmul = torch.backends.cuda.matmul
    # torch.backends.cudnn replaces itself with a module object at import: its ``conv``
    # settings exist at run time but not in the type stubs
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = mode
    conv.fp32_precision = mode
    low = precision == "bf16"
    try:
        with ExitStack() as stack:
            for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device_type, torch.bfloat16, enabled=low))
            yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


#: How far bfloat16 autocast can move a logit margin (max_{i!=t} Z_i - Z_t), in logits: the
#: largest change of any logit of Models A and B over 100 test images under random flows was
#: 0.07-0.09 (a margin is a difference of two), so a search under ``"bf16"`` accepts an
#: iterate only this far inside the success region before its fp32 verdict.
BF16_LOGIT_ERROR = 0.25


class Float32Logits(nn.Module):
    """``model`` with its output cast to fp32: under ``"bf16"`` a model's last matmul returns
    bfloat16 logits, which the attacks' margins, losses and comparisons should not inherit."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out.float()


def float32_logits(model: nn.Module, precision: str) -> nn.Module:
    """``model`` whose logits are fp32 under ``precision`` (wrapped only for ``"bf16"``)."""
    return Float32Logits(model) if precision == "bf16" else model
