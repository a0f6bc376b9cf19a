from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stadv.flow import flow_loss, to_pixels, warp


def _images(n: int = 3, c: int = 2, h: int = 6, w: int = 7) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))


def test_zero_flow_returns_the_input_exactly() -> None:
    x = _images()
    for padding in ("border", "zeros"):
        assert torch.equal(warp(x, torch.zeros(3, 2, 6, 7), padding=padding), x)


def test_integer_flow_is_an_exact_shift() -> None:
    x = _images()
    f = torch.zeros(3, 2, 6, 7)
    f[:, 0] = 2.0  # sample two pixels to the right
    f[:, 1] = -1.0  # and one up
    out = warp(x, f, padding="zeros")
    assert torch.equal(out[:, :, 1:, :-2], x[:, :, :-1, 2:])
    assert torch.equal(out[:, :, 0, :], torch.zeros_like(out[:, :, 0, :]))
    assert torch.equal(out[:, :, :, -2:], torch.zeros_like(out[:, :, :, -2:]))
    border = warp(x, f, padding="border")
    assert torch.equal(border[:, :, 0, :-2], x[:, :, 0, 2:])  # clipped to the first row


def test_half_pixel_flow_averages_neighbours() -> None:
    x = _images()
    f = torch.zeros(3, 2, 6, 7)
    f[:, 0] = 0.5
    out = warp(x, f, padding="border")
    torch.testing.assert_close(out[..., :-1], (x[..., :-1] + x[..., 1:]) / 2)


def test_matches_grid_sample_with_aligned_corners() -> None:
    x = _images()
    f = torch.randn(3, 2, 6, 7, generator=torch.Generator().manual_seed(1)) * 2
    h, w = 6, 7
    xs = torch.arange(w).view(1, 1, w) + f[:, 0]
    ys = torch.arange(h).view(1, h, 1) + f[:, 1]
    grid = torch.stack([2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], dim=-1)
    for padding in ("border", "zeros"):
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)
        torch.testing.assert_close(warp(x, f, padding=padding), ref, atol=1e-5, rtol=0)


def test_grid_units_scale_by_half_the_size() -> None:
    f = torch.ones(1, 2, 6, 8)
    px = to_pixels(f, "grid")
    assert torch.equal(px[:, 0], torch.full((1, 6, 8), 4.0)) and torch.equal(
        px[:, 1], torch.full((1, 6, 8), 3.0)
    )
    x = _images(1, 1, 6, 8)
    torch.testing.assert_close(
        warp(x, f / 4.0, units="grid")[:, :, :, 0],
        warp(x, torch.ones(1, 2, 6, 8) * torch.tensor([1.0, 0.75]).view(1, 2, 1, 1))[:, :, :, 0],
    )


def test_gradient_is_finite_at_zero_flow() -> None:
    x = _images()
    f = torch.zeros(3, 2, 6, 7, requires_grad=True)
    (warp(x, f).sum() + flow_loss(f).sum()).backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def _hand_flow() -> torch.Tensor:
    # 2x2 field: du = [[0, 1], [0, 0]], dv = [[0, 0], [2, 0]]
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0, 0, 1] = 1.0
    f[0, 1, 1, 0] = 2.0
    return f


def test_eq4_four_neighbours_by_hand() -> None:
    # Ordered pairs (p, q) inside the image: each unordered edge twice. Edges of the 2x2 grid:
    # (0,0)-(0,1): |du|=1 -> 1; (1,0)-(1,1): |dv|=2 -> 2; (0,0)-(1,0): |dv|=2 -> 2;
    # (0,1)-(1,1): |du|=1 -> 1. Out-of-image neighbours replicate p: sqrt(eps) each, 8 of them.
    eps = 1e-8
    expected = 2 * (1 + 2 + 2 + 1) + 8 * math.sqrt(eps) + 0.0
    got = float(flow_loss(_hand_flow(), variant="eq4", neighbours="4", eps=eps))
    assert got == pytest.approx(expected, rel=1e-6)


def test_eq4_diagonal_and_eight_by_hand() -> None:
    eps = 0.0
    # Diagonal offsets, replicate-padded: an out-of-image diagonal neighbour clamps onto the
    # adjacent pixel along the edge. Per pixel: (0,0): 0 + 1 + 2 + 0; (0,1): 1 + 0 + sqrt5 + 1;
    # (1,0): 2 + sqrt5 + 0 + 2; (1,1): 0 + 1 + 2 + 0  ->  12 + 2 sqrt5.
    diagonal = 12 + 2 * math.sqrt(5)
    assert float(
        flow_loss(_hand_flow(), variant="eq4", neighbours="diagonal", eps=eps)
    ) == pytest.approx(diagonal)
    assert float(flow_loss(_hand_flow(), variant="eq4", neighbours=8, eps=eps)) == pytest.approx(
        12 + diagonal
    )


def test_eq5_is_the_root_of_the_summed_squares() -> None:
    eps = 0.0
    # Squared differences, each edge twice: 2 * (1 + 4 + 4 + 1) = 20.
    assert float(flow_loss(_hand_flow(), variant="eq5", eps=eps)) == pytest.approx(math.sqrt(20))
    assert float(flow_loss(_hand_flow(), variant="eq5", eps=eps, eq5_scale="n")) == pytest.approx(
        math.sqrt(20) / 4
    )
    assert float(
        flow_loss(_hand_flow(), variant="eq5", eps=eps, eq5_scale="sqrt_n")
    ) == pytest.approx(math.sqrt(20) / 2)


def test_constant_flow_costs_only_eps() -> None:
    f = torch.full((2, 2, 5, 5), 0.7)
    assert torch.allclose(flow_loss(f, variant="eq4", eps=1e-8), torch.full((2,), 100 * 1e-4))


def test_per_sample_losses_are_independent() -> None:
    f = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    batch = flow_loss(f, variant="eq5")
    for i in range(4):
        torch.testing.assert_close(batch[i : i + 1], flow_loss(f[i : i + 1], variant="eq5"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "eq6"}, "flow loss variant 'eq6'"),
        ({"neighbours": 6}, "neighbours 6"),
        ({"variant": "eq4", "eq5_scale": "n"}, "only applies to variant 'eq5'"),
        ({"variant": "eq5", "eq5_scale": "pixels"}, "eq5_scale 'pixels'"),
        ({"eps": -1.0}, "eps must be >= 0"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        flow_loss(torch.zeros(1, 2, 3, 3), **kwargs)  # type: ignore[arg-type]


def test_bad_warp_arguments_raise() -> None:
    with pytest.raises(ValueError, match="padding 'reflect'"):
        warp(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, 3, 3), padding="reflect")
    with pytest.raises(ValueError, match="units 'cm'"):
        warp(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, 3, 3), units="cm")
    with pytest.raises(ValueError, match="does not match"):
        warp(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, 4, 3))


def test_default_variant_is_eq5_like_stadv() -> None:
    from stadv.attack import StAdv

    f = _hand_flow()
    assert torch.equal(flow_loss(f), flow_loss(f, variant="eq5"))
    assert not torch.equal(flow_loss(f), flow_loss(f, variant="eq4"))
    assert StAdv().flow_loss == "eq5"
