"""``stadv.views``: each view returns a legible Figure with the expected panels and titles,
leaves no hook behind and leaves the model as it found it (``tiny_model_b`` on real MNIST)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from stadv.data import TensorData
from stadv.deepfool import DeepFool
from stadv.fgsm import FGSM
from stadv.plots import save_png
from stadv.result import AttackResult
from stadv.views import (
    activation_differences,
    grad_cam,
    grad_cam_maps,
    pca_2d,
    pick_examples,
    representation_space,
)

N_IMAGES = 10
VIEWS: dict[str, Callable[..., Figure]] = {
    "representation_space": representation_space,
    "activation_differences": activation_differences,
    "grad_cam": grad_cam,
}


@pytest.fixture(scope="module")
def batch(mnist_test: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:N_IMAGES].clone(), mnist_test.labels[:N_IMAGES].clone()


@pytest.fixture(scope="module")
def result(tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> AttackResult:
    return DeepFool()(tiny_model_b, *batch)


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


@pytest.mark.parametrize("name", list(VIEWS))
def test_view_leaves_model_unchanged(
    name: str,
    tiny_model_b: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    result: AttackResult,
) -> None:
    x, _ = batch
    with torch.no_grad():
        before = tiny_model_b(x)
    grads = [None if p.grad is None else p.grad.clone() for p in tiny_model_b.parameters()]
    tiny_model_b.train()
    try:
        fig = VIEWS[name](tiny_model_b, x, result)
        assert all(m.training for m in tiny_model_b.modules())
    finally:
        tiny_model_b.eval()
    assert isinstance(fig, Figure)
    assert _no_hooks(tiny_model_b)
    assert all(p.requires_grad for p in tiny_model_b.parameters())
    for p, g in zip(tiny_model_b.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or (
            p.grad is not None and g is not None and torch.equal(p.grad, g)
        )
    with torch.no_grad():
        assert torch.equal(tiny_model_b(x), before)


def test_hooks_removed_on_error(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], result: AttackResult
) -> None:
    linear = [m for m in tiny_model_b.modules() if isinstance(m, nn.Linear)][-1]
    with pytest.raises((IndexError, RuntimeError)):  # a (B, K) output has no spatial map
        grad_cam(tiny_model_b, batch[0], result, layer=linear)
    assert _no_hooks(tiny_model_b)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        activation_differences(tiny_model_b, batch[0], result, layers=["nope"])
    assert _no_hooks(tiny_model_b)


def test_representation_space_panels(
    tiny_model_b: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    result: AttackResult,
    tmp_path: Path,
) -> None:
    fig = representation_space(tiny_model_b, batch[0], result)
    axes = fig.axes
    assert len(axes) == 3  # PCA, t-SNE, one class colour bar
    assert [ax.get_title() for ax in axes[:2]] == [
        "PCA of penultimate features",
        "t-SNE of penultimate features",
    ]
    assert [ax.get_xlabel() for ax in axes[:2]] == ["PCA 1", "t-SNE 1"]
    assert axes[2].get_ylabel() == "class"
    assert fig.get_suptitle().startswith("deepfool")
    for ax in axes[:2]:
        assert len(ax.lines) == N_IMAGES  # one line from each adversarial point to its source
        assert len(ax.collections) == 2  # clean and adversarial scatters
    path = save_png(fig, tmp_path / "rep.png")
    width = _png_width(path)
    assert 900 <= width <= 2000, width  # legible at the size MLflow shows it (150 dpi)


def test_representation_space_with_repeated_sources(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:3], batch[1][:3]
    r = FGSM(epsilon=0.3)(tiny_model_b, x, y, targets="all")
    fig = representation_space(tiny_model_b, x, r, perplexity=5.0)
    pca = fig.axes[0]
    assert len(pca.lines) == 27
    clean = np.asarray(pca.collections[1].get_offsets())
    assert clean.shape == (3, 2)  # three sources, each drawn once


def test_activation_differences_panels(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], result: AttackResult
) -> None:
    fig = activation_differences(tiny_model_b, batch[0], result, examples=2)
    # Model B: input + 3 convolutions + 1 linear = 5 columns, 2 rows, one colour bar per column.
    assert len(fig.axes) == 2 * 5 + 5
    titles = [ax.get_title() for ax in fig.axes[:10] if ax.get_title()]
    assert titles[0].startswith("input") and len(titles) == 5
    assert titles[1].startswith("1 Conv2d\n(64, 14, 14)")
    assert titles[4].startswith("9 Linear\n(10,)")
    assert "layer by layer" in fig.get_suptitle()
    # A successful row shows a non-zero change in every layer.
    images = [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes[:5]]
    assert all(float(np.nanmax(np.abs(a))) > 0 for a in images)
    fig = activation_differences(tiny_model_b, batch[0], result, layers=["1", "3"], examples=1)
    assert len(fig.axes) == 3 + 3


def test_grad_cam_panels_and_maps(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], result: AttackResult
) -> None:
    fig = grad_cam(tiny_model_b, batch[0], result, examples=3)
    assert len(fig.axes) == 3 * 4 + 1
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0].startswith("clean") and titles[1].startswith("Grad-CAM clean")
    assert titles[2].startswith("adversarial") and titles[3].startswith("Grad-CAM adv")
    # The default layer is Model B's last convolution with a spatial (5 x 5) output.
    assert "layer 3 (Conv2d)" in fig.get_suptitle()
    conv = dict(tiny_model_b.named_modules())["3"]
    maps = grad_cam_maps(tiny_model_b, batch[0][:4], batch[1][:4], conv)
    assert maps.shape == (4, 28, 28) and bool((maps >= 0).all()) and bool((maps > 0).any())
    assert _no_hooks(tiny_model_b)


def test_pca_matches_the_covariance_eigenvalues() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 6, generator=gen, dtype=torch.float64) * torch.tensor(
        [5.0, 3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64
    )
    proj = pca_2d(feats)
    cov = torch.cov(feats.T)
    top = torch.linalg.eigvalsh(cov).flip(0)[:2]
    torch.testing.assert_close(proj.var(dim=0), top)
    assert abs(float(proj[:, 0] @ proj[:, 1])) < 1e-8


def test_pick_examples_and_bad_arguments(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], result: AttackResult
) -> None:
    rows = pick_examples(result, 4)
    assert len(rows) == 4 and all(bool(result.success[i]) for i in rows)
    with pytest.raises(ValueError, match="examples"):
        pick_examples(result, 0)
    with pytest.raises(ValueError, match="source_index"):
        grad_cam(tiny_model_b, batch[0][:3], result)
    bad: Any = batch[0][0]
    with pytest.raises(ValueError, match="images must have shape"):
        representation_space(tiny_model_b, bad, result)


def _png_width(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big")
