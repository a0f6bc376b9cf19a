"""The float32 precision policy of an attack's model evaluations: strict fp32 or TF32.

Why a policy: on Ampere and newer GPUs, PyTorch lets cuDNN convolutions use TF32 (10-bit
mantissa) by default, and matmuls when asked to. TF32 moves a model's logits by ~1e-3 to 1e-2,
more than stAdv's acceptance hysteresis (``success_margin`` 1e-3), so a success found under
TF32 could be a failure under strict fp32 and the other way round. An attack therefore runs
its search under an explicit, named policy (``precision``, default ``"fp32"``), and the verdict
on the returned images (:func:`stadv.attack_base.finalize_result`) is always taken in strict
fp32, whatever the search used: the reported success mask agrees with the model's fp32
prediction, and ``"tf32"`` can only make the search faster or its iterates rougher, never the
verdict different.

* ``"fp32"``: cuBLAS matmuls and cuDNN convolutions in IEEE fp32
  (``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.cudnn.conv.fp32_precision``
  ``"ieee"``: what ``allow_tf32 = False`` sets);
* ``"tf32"``: both ``"tf32"``.

On a CPU both policies compute the same numbers (the flags are CUDA's). :func:`precision_policy`
sets the flags for the duration of a ``with`` block and restores the caller's afterwards, also
when the block raises; nothing is kept at module level.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

from stadv.options import check_choice

Precision = Literal["fp32", "tf32"]

#: The policies, in the order a command line lists them.
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(value: object) -> Precision:
    """``value`` as a policy name; ``ValueError`` naming it and the allowed ones."""
    name = check_choice("precision", value, PRECISIONS)
    return "tf32" if name == "tf32" else "fp32"


@contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Evaluate models under ``precision`` (``"fp32"`` or ``"tf32"``) inside the block.

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
    anything but ``"tf32"`` is strict fp32."""
    mode = "tf32" if precision == "tf32" else "ieee"
    matmul = torch.backends.cuda.matmul
    # torch.backends.cudnn replaces itself with a module object at import: its ``conv``
    # settings exist at run time but not in the type stubs
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = mode
    conv.fp32_precision = mode
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
