"""Faster input gradients of few-channel convolutions on the CPU (used inside attacks only).

Every attack here differentiates the model's output with respect to its *input*, with the
parameters frozen. For the first convolution of an MNIST or CIFAR model (1 or 3 input
channels) that input gradient is a transposed convolution to 1-3 channels, and oneDNN
(torch's default CPU convolution backend) computes it several times slower than torch's native
kernel. Measured on this project's 2-core CPU, 1 thread, 170 images (``grad_input`` only):

    =========================================  ===========  ======
    layer                                        oneDNN      native
    =========================================  ===========  ======
    Model B conv1 (1 -> 64, 8x8, stride 2)       30.4 ms     5.3 ms
    Model A conv1 (1 -> 64, 5x5)                 38.1 ms     5.8 ms
    Model C conv1 (1 -> 128, 3x3)                56.8 ms     7.0 ms
    3 -> 64, 3x3 on 32x32 (128 images)           23.3 ms     8.7 ms
    16 -> 64, 3x3 on 28x28 (128 images)          16.8 ms    27.8 ms
    =========================================  ===========  ======

:func:`native_input_grad` therefore routes the input gradient of every ``nn.Conv2d`` with at most
:data:`MAX_IN_CHANNELS` input channels (``groups == 1``, numeric zero padding) through the native kernel,
on CPU tensors, while its parameters are frozen; the forward pass and every other layer are
unchanged (the gradient agrees with oneDNN's to float rounding). A whole stAdv evaluation
(warp, forward, backward) was measured 1.1-1.3x faster on Models A, B, C.
:func:`stadv.model_mode.prepared_model` applies it; it restores each module on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MAX_IN_CHANNELS = 4  # measured faster natively: 1, 3, 4 channels; slower from ~16 on


class _NativeInputGradConv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward returns only the input gradient, from the native kernel."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, x.dtype, stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation, 1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, pad, dilation = ctx.conf
        # under bfloat16 autocast the forward ran in bf16: the gradient comes in bf16 too
        weight = weight.to(grad_out.dtype)
        # only the "enabled" flag changes (mkldnn.flags() would also set TF32 and warn)
        enabled = torch.backends.mkldnn.set_flags(False, None, None, None)[0]  # type: ignore[no-untyped-call]
        try:
            grad_in = torch.nn.grad.conv2d_input(  # type: ignore[attr-defined]
                shape, weight, grad_out.contiguous(), stride, pad, dilation, 1
            )
        finally:
            torch.backends.mkldnn.set_flags(enabled, None, None, None)  # type: ignore[no-untyped-call]
        return grad_in.to(dtype), None, None, None, None, None


def _eligible(module: nn.Conv2d) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.in_channels <= MAX_IN_CHANNELS
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and "forward" not in vars(module)
    )


def _fast_forward(conv: nn.Conv2d) -> Any:
    plain = conv.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        frozen = not conv.weight.requires_grad and (
            conv.bias is None or not conv.bias.requires_grad
        )
        if x.device.type != "cpu" or not frozen or not torch.is_grad_enabled():
            return plain(x)
        return _NativeInputGradConv2d.apply(  # type: ignore[no-any-return]
            x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation
        )

    return forward


@contextmanager
def native_input_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, few-channel convolutions of ``model`` take the native input gradient.

    Applies to every ``nn.Conv2d`` (exact type) with ``in_channels <= MAX_IN_CHANNELS``,
    ``groups == 1`` and numeric zero padding, and only while its parameters do not require gradients,
    the input is on the CPU and autograd is on; otherwise the module's own forward runs. Each
    module's ``forward`` is restored on exit, also on an exception.
    """
    patched = [m for m in model.modules() if isinstance(m, nn.Conv2d) and _eligible(m)]
    try:
        for m in patched:
            m.forward = _fast_forward(m)  # type: ignore[method-assign]
        yield model
    finally:
        for m in patched:
            vars(m).pop("forward", None)
