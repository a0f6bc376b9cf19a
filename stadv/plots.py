"""Figures (matplotlib, Agg): the paper's Figure 2 grid, flow quivers, target-vs-prediction heat map.

Every function returns a ``Figure`` and draws nothing on screen; save it with
:func:`save_png` (150 dpi: every figure is at least 1000 px wide, its text at least 10 pt).
No global pyplot state is used (figures are created with ``Figure()``, styled inside a
temporary ``rc_context``), and no axis uses offset notation (:func:`plain_numbers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import ScalarFormatter

from stadv.metrics import target_prediction_matrix
from stadv.result import AttackResult

#: Figure style: legible where MLflow shows a PNG scaled to its panel's width.
STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
}
DPI = 150
SUCCESS_COLOR = "tab:green"
FAILURE_COLOR = "tab:red"


@contextmanager
def style() -> Iterator[None]:
    """The figures' font sizes, for artists created inside (no global state is changed)."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        yield


def plain_numbers(ax: Axes) -> None:
    """Plain tick labels on every linear axis of ``ax``: no offset (``+1e3``) and no
    scientific multiplier, so each tick reads as its value."""
    for axis in (ax.xaxis, ax.yaxis):
        if isinstance(axis.get_major_formatter(), ScalarFormatter):
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            axis.set_major_formatter(formatter)


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
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
    result: AttackResult,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int = 10,
    *,
    title: str = "stAdv",
) -> Figure:
    """The paper's Figure 2: row = one source image per class (original on the diagonal),
    column = target class; off-diagonal cells show the adversarial image towards that target,
    framed green where the attack succeeded and red where it failed (the legend says so).

    Needs a targeted result (``targets="all"`` gives every cell); rows are the first image of
    each class among ``images``, for the classes present (no blank rows); missing cells stay
    blank. ``title`` names the attack in the figure's title.
    """
    if result.targets is None:
        raise ValueError("figure2_grid needs a targeted result (targets='all')")
    src = result.source_index.cpu()
    tgt = result.targets.cpu()
    ok = result.success.cpu()
    labels_cpu = labels.cpu()
    rows = [c for c in range(num_classes) if bool((labels_cpu == c).any())]
    with style():
        fig = Figure(figsize=(1.5 + 0.85 * num_classes, 2.2 + 0.85 * max(1, len(rows))))
        axes = fig.subplots(max(1, len(rows)), num_classes, squeeze=False)
        for r, c in enumerate(rows):
            row_src = int((labels_cpu == c).nonzero().flatten()[0])
            for t in range(num_classes):
                ax = axes[r][t]
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(str(t))
                if t == 0:
                    ax.set_ylabel(str(c), rotation=0, ha="right", va="center")
                if t == c:
                    ax.imshow(_img(images[row_src]), cmap="gray", vmin=0, vmax=1)
                    for spine in ax.spines.values():
                        spine.set_edgecolor("0.5")
                    continue
                hit = ((src == row_src) & (tgt == t)).nonzero().flatten()
                if not len(hit):
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                    continue
                k = int(hit[0])
                ax.imshow(_img(result.adv_images[k]), cmap="gray", vmin=0, vmax=1)
                for spine in ax.spines.values():
                    spine.set_edgecolor(SUCCESS_COLOR if bool(ok[k]) else FAILURE_COLOR)
                    spine.set_linewidth(2.5)
        fig.supylabel("source class (true label)")
        fig.suptitle(f"{title}: rows = source class, columns = target class")
        fig.legend(
            handles=[
                Patch(
                    facecolor="none",
                    edgecolor=SUCCESS_COLOR,
                    linewidth=2.5,
                    label="classified as the target",
                ),
                Patch(
                    facecolor="none", edgecolor=FAILURE_COLOR, linewidth=2.5, label="attack failed"
                ),
                Patch(facecolor="none", edgecolor="0.5", label="diagonal: original image"),
            ],
            loc="lower center",
            ncol=3,
            frameon=False,
        )
        fig.subplots_adjust(bottom=0.9 / (2.2 + 0.85 * max(1, len(rows))), top=0.88)
    return fig


def flow_quiver(
    result: AttackResult, index: int = 0, images: torch.Tensor | None = None, step: int = 2
) -> Figure:
    """The flow field of attack ``index`` as arrows over its source image, beside the
    adversarial image; the title names the source class, the target and the outcome.

    Arrows point from each output pixel to where it samples the input, drawn to scale in the
    flow's units (pixels, unless the attack used ``units="grid"``: its ``extra["params"]``
    says); the key shows an arrow of length 1.
    """
    if result.flows is None:
        raise ValueError("flow_quiver needs a result with flows (stAdv)")
    if not 0 <= index < len(result):
        raise ValueError(f"index {index} out of range for {len(result)} attacks")
    flow = result.flows[index].detach().cpu().float()
    h, w = flow.shape[-2:]
    base = (
        images[int(result.source_index[index])] if images is not None else result.adv_images[index]
    )
    source = int(result.labels[index])
    pred = int(result.predictions[index])
    ok = bool(result.success[index])
    target = int(result.targets[index]) if result.targets is not None else None
    with style():
        fig = Figure(figsize=(8, 4.6))
        ax0, ax1 = fig.subplots(1, 2)
        ax0.imshow(_img(base), cmap="gray", vmin=0, vmax=1)
        ys, xs = torch.meshgrid(torch.arange(0, h, step), torch.arange(0, w, step), indexing="ij")
        u = flow[0, ::step, ::step]
        v = flow[1, ::step, ::step]
        q = ax0.quiver(
            xs.numpy(),
            ys.numpy(),
            u.numpy(),
            v.numpy(),
            color="tab:red",
            angles="xy",
            scale_units="xy",
            scale=1,
            width=0.006,
        )
        params = result.extra.get("params")
        units = params.get("units", "pixels") if isinstance(params, dict) else "pixels"
        unit = "1 pixel" if units in ("pixels", "pixel") else f"1 ({units} units)"
        # the scale arrow inside the image (a key outside the axes is cut by a tight bbox)
        ax0.quiverkey(
            q,
            0.08,
            0.93,
            1.0,
            f"arrow of {unit}",
            labelpos="E",
            coordinates="axes",
            color="yellow",
            labelcolor="yellow",
            fontproperties={"size": 11},
        )
        biggest = float(flow.abs().max())
        ax0.set_title(f"flow over the source image (max |f| {biggest:.2f})")
        ax1.imshow(_img(result.adv_images[index]), cmap="gray", vmin=0, vmax=1)
        ax1.set_title(f"adversarial image: predicted {pred}")
        for ax in (ax0, ax1):
            ax.set_xticks([])
            ax.set_yticks([])
        goal = f" -> target {target}" if target is not None else " (untargeted)"
        verdict = "succeeded" if ok else "failed"
        fig.suptitle(f"source {source}{goal}: attack {verdict}")
    return fig


def target_heatmap(result: AttackResult, num_classes: int = 10) -> Figure:
    """Heat map of counts: row = target class (true class if untargeted), column = prediction;
    each cell shows its count (a targeted attack succeeds on the diagonal)."""
    mat = target_prediction_matrix(result, num_classes).numpy()
    targeted = result.targets is not None
    with style():
        fig = Figure(figsize=(8.5, 7.0))
        ax = fig.subplots()
        im = ax.imshow(mat, cmap="viridis")
        fig.colorbar(im, ax=ax, label="attacks")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("target class" if targeted else "true class")
        ax.set_xticks(range(num_classes))
        ax.set_yticks(range(num_classes))
        top = mat.max() if mat.size else 0
        for i in range(num_classes):
            for j in range(num_classes):
                if mat[i, j]:
                    dark = mat[i, j] < 0.6 * top
                    ax.text(
                        j,
                        i,
                        str(int(mat[i, j])),
                        ha="center",
                        va="center",
                        fontsize=10,
                        color="w" if dark else "k",
                    )
        what = "diagonal = attack succeeded" if targeted else "diagonal = attack failed"
        ax.set_title(f"{len(result)} attacks: target vs prediction ({what})")
    return fig


def heatmap(
    values: list[list[float]],
    row_labels: list[str],
    col_labels: list[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str = "",
) -> Figure:
    """A generic annotated heat map on [0, 1] (sweeps use it for success over kappa x tau)."""
    with style():
        fig = Figure(figsize=(max(8.0, 2.5 + 1.0 * len(col_labels)), 2.5 + 0.7 * len(row_labels)))
        ax = fig.subplots()
        im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        fig.colorbar(im, ax=ax, label=colorbar)
        ax.set_xticks(range(len(col_labels)), col_labels)
        ax.set_yticks(range(len(row_labels)), row_labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=11,
                        color="w" if v < 0.6 else "k",
                    )
    return fig
