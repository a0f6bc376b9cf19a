"""Flow fields: bilinear warping (paper Eq. 1-2) and the flow loss L_flow (Eq. 4 / Eq. 5).

Conventions (Xiao et al., ICLR 2018, arXiv 1801.02612, Section 3):

* A flow field ``f`` has shape (N, 2, H, W). ``f[:, 0]`` is the horizontal displacement
  ``du`` (along the width, x) and ``f[:, 1]`` the vertical one ``dv`` (along the height, y).
* Backward warping: output pixel p = (x, y) takes the input's bilinear sample at
  ``(x + du(p), y + dv(p))``, from its 4 nearest pixels q weighted by
  ``(1 - |x_q - x'|) (1 - |y_q - y'|)``.
* ``units="pixels"`` (the paper's, default): ``du = 1`` moves one pixel.
  ``units="grid"``: normalised [-1, 1] grid coordinates as in ``torch.nn.functional.grid_sample``
  and advertorch's ``SpatialTransformAttack``: one unit is ``W / 2`` pixels horizontally and
  ``H / 2`` vertically (``align_corners=False``). The flow loss is taken in the flow's own
  units, so the same ``tau`` penalises a grid-unit flow about ``(W/2)^2``-fold less in Eq. 5
  and ``W/2``-fold less in Eq. 4.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F

from stadv.options import check_choice

Padding = Literal["border", "zeros"]
Units = Literal["pixels", "grid"]
FlowLossVariant = Literal["eq4", "eq5"]
Neighbours = Literal["4", "diagonal", "8"]
Eq5Scale = Literal["none", "n", "sqrt_n"]

PADDINGS: tuple[str, ...] = get_args(Padding)
UNITS: tuple[str, ...] = get_args(Units)
FLOW_LOSS_VARIANTS: tuple[str, ...] = get_args(FlowLossVariant)
NEIGHBOURS: tuple[str, ...] = get_args(Neighbours)
EQ5_SCALES: tuple[str, ...] = get_args(Eq5Scale)

_OFFSETS: dict[str, tuple[tuple[int, int], ...]] = {
    "4": ((-1, 0), (1, 0), (0, -1), (0, 1)),
    "diagonal": ((-1, -1), (-1, 1), (1, -1), (1, 1)),
    "8": ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}


def _check_flow(images: torch.Tensor | None, flow: torch.Tensor) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    if images is not None:
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if images.shape[0] != flow.shape[0] or images.shape[2:] != flow.shape[2:]:
            raise ValueError(
                f"flow {tuple(flow.shape)} does not match images {tuple(images.shape)}"
            )


def to_pixels(flow: torch.Tensor, units: str = "pixels") -> torch.Tensor:
    """The flow in pixel units (a no-op for ``units="pixels"``); ``units`` is validated."""
    return _to_pixels(flow, cast(Units, check_choice("units", units, UNITS)))


def _to_pixels(flow: torch.Tensor, units: Units) -> torch.Tensor:
    """:func:`to_pixels` without the argument check (``units`` already validated)."""
    if units == "pixels":
        return flow
    h, w = flow.shape[-2:]
    scale = flow.new_tensor([w / 2.0, h / 2.0]).view(1, 2, 1, 1)
    return flow * scale


def warp(
    images: torch.Tensor, flow: torch.Tensor, *, padding: str = "border", units: str = "pixels"
) -> torch.Tensor:
    """Resample ``images`` (N, C, H, W) at ``p + flow(p)``, bilinearly and differentiably.

    Args:
        images: (N, C, H, W).
        flow: (N, 2, H, W), ``flow[:, 0]`` horizontal, ``flow[:, 1]`` vertical (see module doc).
        padding: ``"border"`` (default; sampling positions are clipped to the image, as the
            TensorFlow reference implementation does) or ``"zeros"`` (outside pixels are 0).
        units: ``"pixels"`` (default) or ``"grid"``.
    Returns:
        (N, C, H, W). A zero flow returns ``images`` exactly and an integer flow is an exact
        shift, since the interpolation weights are then exactly 0 and 1.
    """
    _check_flow(images, flow)
    pad = cast(Padding, check_choice("padding", padding, PADDINGS))
    return warp_unchecked(images, flow, pad, cast(Units, check_choice("units", units, UNITS)))


def warp_unchecked(
    images: torch.Tensor, flow: torch.Tensor, pad: Padding, units: Units
) -> torch.Tensor:
    """:func:`warp` without the argument checks: for callers that validated ``padding`` and
    ``units`` once (:class:`stadv.attack.StAdv`) and call this in their inner loop."""
    flow = _to_pixels(flow, units).to(images.dtype)
    n, c, h, w = images.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1) + flow[:, 1]
    if pad == "border":
        xs = xs.clamp(0, w - 1)
        ys = ys.clamp(0, h - 1)
    x0f, y0f = xs.detach().floor(), ys.detach().floor()
    wx, wy = xs - x0f, ys - y0f
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = x0 + 1, y0 + 1
    flat = images.reshape(n, c, h * w)

    def corner(yi: torch.Tensor, xi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if pad == "zeros":
            valid = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)).to(weight.dtype)
            weight = weight * valid
        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        return torch.gather(flat, 2, idx).view(n, c, h, w) * weight.unsqueeze(1)

    return (
        corner(y0, x0, (1 - wx) * (1 - wy))
        + corner(y0, x1, wx * (1 - wy))
        + corner(y1, x0, (1 - wx) * wy)
        + corner(y1, x1, wx * wy)
    )


def _neighbour_sq_diffs(flow: torch.Tensor, neighbours: str) -> torch.Tensor:
    """(K, N, H, W): ``|du_p - du_q|^2 + |dv_p - dv_q|^2`` for each of the K neighbour offsets.

    Out-of-image neighbours take the value of the nearest in-image pixel (replicate padding,
    which is what the TensorFlow reference's symmetric padding of width 1 amounts to): for the
    4-neighbourhood that is the pixel itself (a term of ``sqrt(eps)`` in Eq. 4); for a diagonal
    offset at an edge it is the adjacent pixel along that edge.
    """
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    diffs = []
    for dy, dx in _OFFSETS[neighbours]:
        shifted = padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        diffs.append((flow - shifted).pow(2).sum(dim=1))
    return torch.stack(diffs)


def flow_loss(
    flow: torch.Tensor,
    *,
    variant: str = "eq5",
    neighbours: str | int = "4",
    eps: float = 1e-8,
    eq5_scale: str = "none",
) -> torch.Tensor:
    """Per-sample flow loss L_flow (N,), the paper's smoothness penalty on ``flow``.

    * ``variant="eq4"`` (paper Eq. 4)::

          L_flow(f) = sum_p sum_{q in N(p)} sqrt(|du_p - du_q|^2 + |dv_p - dv_q|^2 + eps)

    * ``variant="eq5"`` (default, as :class:`stadv.attack.StAdv`'s: the appendix form, square
      root outside the sum)::

          L_flow(f) = s * sqrt(sum_p sum_{q in N(p)} |du_p - du_q|^2 + |dv_p - dv_q|^2 + eps)

      with ``s = 1`` (``eq5_scale="none"``), ``1/n`` (``"n"``) or ``1/sqrt(n)`` (``"sqrt_n"``),
      n = H * W pixels.

    Args:
        flow: (N, 2, H, W) in the units the attack optimises (the loss is not rescaled).
        variant: ``"eq5"`` [default, the same reading as :class:`stadv.attack.StAdv`'s
            ``flow_loss`` default; see ``docs/reproduction.md`` for why] or ``"eq4"``.
        neighbours: ``"4"`` (up, down, left, right; default), ``"diagonal"`` (the four diagonal
            neighbours, as the TensorFlow reference ``stadv.losses.flow_loss``), or ``"8"``.
            Every ordered pair (p, q) counts, so each unordered pair is summed twice, as the
            double sum in the paper reads.
        eps: added under each square root so the gradient at a constant flow is finite.
        eq5_scale: the Eq. 5 factor, see above; must be ``"none"`` for Eq. 4.
    """
    _check_flow(None, flow)
    var = cast(FlowLossVariant, check_choice("flow loss variant", variant, FLOW_LOSS_VARIANTS))
    nb = cast(Neighbours, check_choice("neighbours", neighbours, NEIGHBOURS))
    scale = cast(Eq5Scale, check_choice("eq5_scale", eq5_scale, EQ5_SCALES))
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if var == "eq4" and scale != "none":
        raise ValueError(f"eq5_scale={eq5_scale!r} only applies to variant 'eq5'")
    return flow_loss_unchecked(flow, var, nb, eps, scale)


def flow_loss_unchecked(
    flow: torch.Tensor,
    variant: FlowLossVariant,
    neighbours: Neighbours,
    eps: float,
    eq5_scale: Eq5Scale,
) -> torch.Tensor:
    """:func:`flow_loss` without the argument checks (all validated once by the caller)."""
    sq = _neighbour_sq_diffs(flow, neighbours)
    if variant == "eq4":
        return (sq + eps).sqrt().sum(dim=(0, 2, 3))
    total = (sq.sum(dim=(0, 2, 3)) + eps).sqrt()
    n_pixels = float(flow.shape[-1] * flow.shape[-2])
    if eq5_scale == "n":
        total = total / n_pixels
    elif eq5_scale == "sqrt_n":
        total = total / n_pixels**0.5
    return total


def cast_neighbours(value: str | int) -> Neighbours:
    return cast(Neighbours, check_choice("neighbours", value, NEIGHBOURS))
