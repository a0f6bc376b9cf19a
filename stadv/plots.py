"""Figures (matplotlib, Agg): the paper's Figure 2 grid, flow quivers, target-vs-prediction heat map.

Every function returns a ``Figure`` and draws nothing on screen; save it with
:func:`save_png`. No global pyplot state is used (figures are created with ``Figure()``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from stadv.metrics import target_prediction_matrix
from stadv.result import AttackResult


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _img(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> the (H, W) or (H, W, C) float array matplotlib draws."""
    t = t.detach().cpu().float()
    return (t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)).numpy()


def figure2_grid(
    result: AttackResult, images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10
) -> Figure:
    """The paper's Figure 2: row = one source image per class (original on the diagonal),
    column = target class; off-diagonal cells show the adversarial image towards that target,
    framed green where the attack succeeded and red where it failed.

    Needs a targeted result (``targets="all"`` gives every cell); rows are the first image of
    each class among ``images``; missing cells stay blank.
    """
    if result.targets is None:
        raise ValueError("figure2_grid needs a targeted result (targets='all')")
    fig = Figure(figsize=(num_classes * 0.9, num_classes * 0.9))
    axes = fig.subplots(num_classes, num_classes, squeeze=False)
    src = result.source_index.cpu()
    tgt = result.targets.cpu()
    ok = result.success.cpu()
    labels_cpu = labels.cpu()
    for c in range(num_classes):
        matches = (labels_cpu == c).nonzero().flatten()
        row_src = int(matches[0]) if len(matches) else None
        for t in range(num_classes):
            ax = axes[c][t]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(str(t), fontsize=8)
            if row_src is None:
                ax.axis("off")
                continue
            if t == c:
                ax.imshow(_img(images[row_src]), cmap="gray", vmin=0, vmax=1)
                continue
            hit = ((src == row_src) & (tgt == t)).nonzero().flatten()
            if not len(hit):
                ax.axis("off")
                continue
            k = int(hit[0])
            ax.imshow(_img(result.adv_images[k]), cmap="gray", vmin=0, vmax=1)
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if bool(ok[k]) else "tab:red")
                spine.set_linewidth(1.5)
    fig.suptitle("stAdv: rows = source class, columns = target class")
    return fig


def flow_quiver(
    result: AttackResult, index: int = 0, images: torch.Tensor | None = None, step: int = 2
) -> Figure:
    """The flow field of attack ``index`` as arrows over its source image, beside the adversarial image.

    Arrows point from each output pixel to where it samples the input (pixel units as stored).
    """
    if result.flows is None:
        raise ValueError("flow_quiver needs a result with flows (stAdv)")
    if not 0 <= index < len(result):
        raise ValueError(f"index {index} out of range for {len(result)} attacks")
    flow = result.flows[index].detach().cpu().float()
    h, w = flow.shape[-2:]
    fig = Figure(figsize=(8, 4))
    ax0, ax1 = fig.subplots(1, 2)
    base = (
        images[int(result.source_index[index])] if images is not None else result.adv_images[index]
    )
    ax0.imshow(_img(base), cmap="gray", vmin=0, vmax=1)
    ys, xs = torch.meshgrid(torch.arange(0, h, step), torch.arange(0, w, step), indexing="ij")
    u = flow[0, ::step, ::step]
    v = flow[1, ::step, ::step]
    ax0.quiver(
        xs.numpy(),
        ys.numpy(),
        u.numpy(),
        v.numpy(),
        color="tab:red",
        angles="xy",
        scale_units="xy",
        scale=1,
    )
    ax0.set_title("flow over source image")
    ax1.imshow(_img(result.adv_images[index]), cmap="gray", vmin=0, vmax=1)
    tgt = f" -> target {int(result.targets[index])}" if result.targets is not None else ""
    ax1.set_title(f"adversarial (pred {int(result.predictions[index])}{tgt})")
    for ax in (ax0, ax1):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def target_heatmap(result: AttackResult, num_classes: int = 10) -> Figure:
    """Heat map of counts: row = target class (true class if untargeted), column = prediction."""
    mat = target_prediction_matrix(result, num_classes).numpy()
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("target class" if result.targets is not None else "true class")
    ax.set_xticks(range(num_classes))
    ax.set_yticks(range(num_classes))
    for i in range(num_classes):
        for j in range(num_classes):
            if mat[i, j]:
                ax.text(j, i, str(int(mat[i, j])), ha="center", va="center", fontsize=6, color="w")
    return fig


def heatmap(
    values: list[list[float]],
    row_labels: list[str],
    col_labels: list[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """A generic annotated heat map (sweeps use it for success over kappa x tau)."""
    fig = Figure(figsize=(1 + 0.8 * len(col_labels), 1 + 0.6 * len(row_labels)))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
    return fig
