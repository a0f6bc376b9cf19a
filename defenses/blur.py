"""Gaussian blur as an input pre-processing defense (an ``nn.Module`` to put in front of a model).

Smoothing the input removes part of a high-frequency perturbation (Xu et al. 2018, "Feature
Squeezing", use median and Gaussian smoothing; advertorch's ``defenses/smoothing.py``). The
filter is a normalised Gaussian kernel ``k(d) ∝ exp(-d^2 / (2 sigma^2))`` for
``d = -(K-1)/2 .. (K-1)/2``, applied separably (rows then columns) to each channel on its own
(depthwise), with reflect padding so the output keeps the input's size. It is differentiable,
so white-box attacks see through it.

Example::

    >>> defended = nn.Sequential(GaussianBlur(kernel_size=3, sigma=1.0), model)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stadv.options import check_int, check_real


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian kernel (kernel_size,) with standard deviation ``sigma``."""
    d = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-(d**2) / (2 * sigma**2))
    return (k / k.sum()).to(torch.float32)


class GaussianBlur(nn.Module):
    """Depthwise Gaussian blur with reflect padding.

    Args (keyword-only):
        kernel_size: odd integer >= 1 [3]; 1 is the identity.
        sigma: the Gaussian's standard deviation in pixels, > 0 [1.0].

    Input (N, C, H, W) with H, W > kernel_size // 2 (reflect padding); output the same shape.
    The kernel is a non-persistent buffer: ``nn.Sequential(blur, model).state_dict()`` holds
    only the model's weights.
    """

    kernel: torch.Tensor

    def __init__(self, *, kernel_size: int = 3, sigma: float = 1.0) -> None:
        super().__init__()
        check_int("kernel_size", kernel_size, low=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        check_real("sigma", sigma, strict=True)
        self.kernel_size = kernel_size
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel1d(kernel_size, self.sigma), persistent=False)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if self.kernel_size == 1:
            return images
        c = images.shape[1]
        r = self.kernel_size // 2
        k = self.kernel.to(dtype=images.dtype, device=images.device)
        x = F.pad(images, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, self.kernel_size), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, self.kernel_size, 1), groups=c)
