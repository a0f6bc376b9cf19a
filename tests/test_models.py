from __future__ import annotations

import pytest
import torch
from torch import nn

from stadv.models import MODELS, build_model, count_parameters


def _expected_params() -> dict[str, int]:
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    fc = lambda i, o: i * o + o  # noqa: E731
    return {
        "A": conv(1, 64, 5) + conv(64, 64, 5) + fc(64 * 20 * 20, 128) + fc(128, 10),
        "B": conv(1, 64, 8) + conv(64, 128, 6) + conv(128, 128, 5) + fc(128, 10),
        "C": conv(1, 128, 3) + conv(128, 64, 3) + fc(64 * 24 * 24, 128) + fc(128, 10),
    }


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_parameter_counts_match_the_architecture(name: str) -> None:
    assert count_parameters(build_model(name)) == _expected_params()[name]


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_logits_shape_and_no_softmax(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    # Logits: not a probability simplex (a softmax inside would make rows sum to 1).
    assert not torch.allclose(out.sum(1), torch.ones(5), atol=1e-3)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())


def test_layer_structure() -> None:
    a, b, c = (build_model(n) for n in "ABC")
    convs = lambda m: [x for x in m.modules() if isinstance(x, nn.Conv2d)]  # noqa: E731
    assert [(x.out_channels, x.kernel_size, x.stride, x.padding) for x in convs(a)] == [
        (64, (5, 5), (1, 1), (0, 0)),
        (64, (5, 5), (1, 1), (0, 0)),
    ]
    assert [(x.out_channels, x.kernel_size, x.stride, x.padding) for x in convs(b)] == [
        (64, (8, 8), (2, 2), (3, 3)),
        (128, (6, 6), (2, 2), (0, 0)),
        (128, (5, 5), (1, 1), (0, 0)),
    ]
    assert [(x.out_channels, x.kernel_size) for x in convs(c)] == [(128, (3, 3)), (64, (3, 3))]
    assert [m.p for m in a.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert [m.p for m in b.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5]
    assert isinstance(list(b.children())[0], nn.Dropout)  # dropout on the input


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'D'; known models: A, B, C"):
        build_model("D")
    assert set(MODELS) == {"A", "B", "C"}
    assert count_parameters(build_model("a")) == count_parameters(build_model("A"))
