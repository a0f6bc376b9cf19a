"""The native input gradient of few-channel convolutions (stadv.input_grad)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stadv.input_grad import native_input_grad
from stadv.model_mode import prepared_model


def _net(in_channels: int, stride: int, padding: int, dilation: int = 1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 5, stride=stride, padding=padding, dilation=dilation),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),
        nn.Flatten(),
        nn.LazyLinear(4),
    )


def _input_grad(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xi).square().sum(), xi)
    return g


@pytest.mark.parametrize(
    ("in_channels", "stride", "padding", "dilation"),
    [(1, 1, 0, 1), (1, 2, 3, 1), (3, 2, 1, 2), (4, 1, 2, 1)],
)
def test_same_gradient_as_the_plain_model(
    in_channels: int, stride: int, padding: int, dilation: int
) -> None:
    net = _net(in_channels, stride, padding, dilation)
    x = torch.rand(5, in_channels, 28, 28)
    net(x)  # materialise the lazy layer
    with prepared_model(net) as fast:
        assert "forward" in vars(fast[0]), "the 1-4 channel convolution is routed"
        assert "forward" not in vars(fast[2]), "an 8-channel convolution is left alone"
        got = _input_grad(fast, x)
    for p in net.parameters():
        p.requires_grad_(False)
    plain = _input_grad(net, x)  # no context: the module's own forward
    for p in net.parameters():
        p.requires_grad_(True)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)
    assert got.abs().sum() > 0


def test_restored_on_exit_and_on_exception() -> None:
    net = _net(1, 1, 0)
    with native_input_grad(net):
        assert "forward" in vars(net[0])
    assert "forward" not in vars(net[0])
    with pytest.raises(RuntimeError, match="boom"), native_input_grad(net):
        raise RuntimeError("boom")
    assert "forward" not in vars(net[0])


def test_trainable_parameters_still_get_gradients() -> None:
    """Outside an attack (parameters trainable) the module's own forward runs."""
    net = _net(1, 2, 1)
    x = torch.rand(3, 1, 28, 28)
    net(x)
    with native_input_grad(net):
        net(x).sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
