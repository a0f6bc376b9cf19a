"""Views of what an attack does inside the model (matplotlib ``Figure`` s, Agg, like
:mod:`stadv.plots`).

* :func:`representation_space`: penultimate-layer features of the clean and adversarial images
  in 2-D by PCA and by t-SNE, coloured by class, each adversarial point joined to its source;
* :func:`activation_differences`: layer by layer, the map of ``max_c |a(x') - a(x)|`` over the
  channels c of each layer's output (forward hooks);
* :func:`grad_cam`: Grad-CAM maps (Selvaraju et al., ICCV 2017) of the clean and the adversarial
  image at the last convolution, each for the class the model predicts.

Every function takes the model, the clean images given to the attack and its
:class:`~stadv.result.AttackResult` (row i of the result comes from
``images[result.source_index[i]]``), runs the model under
:func:`~stadv.model_mode.prepared_model` (its modes and ``requires_grad`` come back) and
removes every hook it registers, also on an exception. Save a figure with
:func:`stadv.plots.save_png`; they are laid out for ~1000 px at the default 100 dpi.

t-SNE uses scikit-learn (``sklearn.manifold.TSNE``), which every install already has through
MLflow's dependencies; it is imported only when :func:`representation_space` runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import nn

from stadv.model_mode import prepared_model
from stadv.plots import save_png
from stadv.result import AttackResult

_TAB10 = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _class_colours(num_classes: int) -> tuple[ListedColormap, BoundaryNorm]:
    colours = [_TAB10[i % len(_TAB10)] for i in range(num_classes)]
    cmap = ListedColormap(colours)
    return cmap, BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)


def _img(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> the (H, W) or (H, W, C) array matplotlib draws."""
    t = t.detach().cpu().float()
    return (t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)).numpy()


def _check(images: torch.Tensor, result: AttackResult) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if len(result) == 0:
        raise ValueError("the result holds no attacks")
    if int(result.source_index.max()) >= images.shape[0]:
        raise ValueError(
            f"result.source_index reaches {int(result.source_index.max())} but only "
            f"{images.shape[0]} images were given: pass the images the attack was called with"
        )
    if tuple(result.adv_images.shape[1:]) != tuple(images.shape[1:]):
        raise ValueError(
            f"images {tuple(images.shape[1:])} and adversarial images "
            f"{tuple(result.adv_images.shape[1:])} differ in shape"
        )


def pick_examples(result: AttackResult, count: int) -> list[int]:
    """Up to ``count`` attack rows to show: the successful ones first, in order, then failures."""
    if count < 1:
        raise ValueError(f"examples must be an integer >= 1, got {count!r}")
    ok = result.success.cpu()
    order = ok.nonzero().flatten().tolist() + (~ok).nonzero().flatten().tolist()
    return [int(i) for i in order[:count]]


@contextmanager
def _hooks(
    modules: Sequence[nn.Module], store: dict[int, torch.Tensor], *, inputs: bool = False
) -> Iterator[None]:
    """Records each module's output (or first input) in ``store[position]``; always removed."""
    handles = []
    try:
        for pos, module in enumerate(modules):

            def record(mod: nn.Module, args: Any, out: Any = None, *, _pos: int = pos) -> None:
                store[_pos] = args[0] if inputs else out

            if inputs:
                handles.append(module.register_forward_pre_hook(record))
            else:
                handles.append(module.register_forward_hook(record))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _features(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    store: dict[int, torch.Tensor] = {}
    with _hooks([layer], store, inputs=True), torch.no_grad():
        model(x)
    return store[0].detach().flatten(1).cpu().double()


def _last_linear(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer: pass the penultimate `layer`")
    return linears[-1]


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """The first two principal components (N, 2) of ``features`` (N, D), by SVD of the centred
    data; each component's sign fixed so its largest loading is positive."""
    centred = features - features.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:2]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    out: torch.Tensor = centred @ (comps * signs).T
    if out.shape[1] < 2:
        out = torch.cat([out, out.new_zeros(out.shape[0], 2 - out.shape[1])], dim=1)
    return out


def representation_space(
    model: nn.Module,
    images: torch.Tensor,
    result: AttackResult,
    *,
    layer: nn.Module | None = None,
    num_classes: int = 10,
    perplexity: float | None = None,
    seed: int = 0,
) -> Figure:
    """Penultimate-layer features of clean and adversarial images, in 2-D by PCA and t-SNE.

    The features are the input of ``layer`` (default: the model's last ``nn.Linear``, i.e.
    what the classifier head sees), for the source images of the result and for its
    adversarial images; both embeddings are fitted on clean and adversarial points together.
    Clean points (circles) are coloured by true class, adversarial ones (crosses) by the
    model's prediction; a line joins each adversarial point to its source (solid: the attack
    succeeded; dotted: it failed).

    Args:
        model: the attacked logits model. images: (N, C, H, W), the images the attack was
            called with. result: its result (M rows).
        layer: the module whose *input* is the representation [last ``nn.Linear``].
        num_classes: classes, for the colours [10].
        perplexity: t-SNE's perplexity [None: min(30, (points - 1) / 3)].
        seed: t-SNE's random state [0].
    Returns:
        A Figure with two panels (PCA, t-SNE) and one class colour bar (3 axes).
    """
    _check(images, result)
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:  # pragma: no cover - scikit-learn comes with MLflow
        raise ImportError(
            "representation_space needs scikit-learn (pip install scikit-learn)"
        ) from exc
    src = result.source_index.cpu()
    sources = torch.unique(src)
    with prepared_model(model) as net:
        head = _last_linear(net) if layer is None else layer
        dev = result.adv_images.device
        clean = _features(net, images[sources.to(images.device)].to(dev), head)
        adv = _features(net, result.adv_images, head)
    feats = torch.cat([clean, adv])
    n = clean.shape[0]
    # Row i of ``adv`` comes from the clean point at ``where[i]``.
    where = torch.searchsorted(sources, src)
    pca = pca_2d(feats).numpy()
    points = feats.shape[0]
    perp = perplexity if perplexity is not None else max(1.0, min(30.0, (points - 1) / 3))
    tsne = TSNE(
        n_components=2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto"
    ).fit_transform(feats.numpy())
    cmap, norm = _class_colours(num_classes)
    first = torch.tensor([int((src == s).nonzero()[0]) for s in sources])
    y_clean = result.labels.cpu()[first]
    pred_adv = result.predictions.cpu()
    ok = result.success.cpu()
    fig = Figure(figsize=(10.5, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    scatter = None
    for ax, emb, name in ((axes[0], pca, "PCA"), (axes[1], tsne, "t-SNE")):
        for i in range(adv.shape[0]):
            a, b = emb[int(where[i])], emb[n + i]
            ax.plot(
                [a[0], b[0]],
                [a[1], b[1]],
                color="0.55",
                lw=0.7,
                ls="-" if bool(ok[i]) else ":",
                zorder=1,
            )
        ax.scatter(
            emb[n:, 0],
            emb[n:, 1],
            c=pred_adv.numpy(),
            cmap=cmap,
            norm=norm,
            marker="x",
            s=36,
            linewidths=1.4,
            zorder=2,
        )
        scatter = ax.scatter(
            emb[:n, 0],
            emb[:n, 1],
            c=y_clean.numpy(),
            cmap=cmap,
            norm=norm,
            marker="o",
            s=42,
            edgecolors="black",
            linewidths=0.6,
            zorder=3,
        )
        ax.set_title(f"{name} of penultimate features")
        ax.set_xlabel(f"{name} 1")
        ax.set_ylabel(f"{name} 2")
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color="0.4",
            markeredgecolor="black",
            label="clean (true class)",
        ),
        Line2D([], [], marker="x", ls="", color="0.4", label="adversarial (predicted class)"),
        Line2D([], [], color="0.55", ls="-", label="attack succeeded"),
        Line2D([], [], color="0.55", ls=":", label="attack failed"),
    ]
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    assert scatter is not None
    bar = fig.colorbar(scatter, ax=list(axes), ticks=range(num_classes), shrink=0.9)
    bar.set_label("class")
    attack = str(result.extra.get("attack", "attack"))
    fig.suptitle(
        f"{attack}: {len(result)} adversarial images from {n} sources "
        f"(success {int(ok.sum())}/{len(result)})"
    )
    return fig


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _as_map(t: torch.Tensor) -> np.ndarray:
    """One sample's |difference| as a 2-D map: max over channels for (C, H, W) with H * W > 1;
    otherwise the units laid out row-major in a near-square grid (NaN padded)."""
    if t.dim() == 3 and t.shape[1] * t.shape[2] > 1:
        return t.amax(dim=0).numpy()
    v = t.flatten().numpy()
    w = math.ceil(math.sqrt(v.size))
    h = math.ceil(v.size / w)
    out = np.full(h * w, np.nan)
    out[: v.size] = v
    return out.reshape(h, w)


def activation_differences(
    model: nn.Module,
    images: torch.Tensor,
    result: AttackResult,
    *,
    layers: Sequence[str] | None = None,
    examples: int = 3,
) -> Figure:
    """Per layer, where the attack changes the activations: ``max_c |a_c(x') - a_c(x)|``.

    Rows are attacks (the first ``examples`` successful ones, then failures); the first column
    is ``max_c |x' - x|`` in the input, then one column per layer: the layer's output
    difference, maxed over channels (a convolution's map at its resolution; a vector output,
    such as a fully connected layer or a 1 x 1 convolution, as its units in a near-square grid).
    Each column shares one colour scale, shown by its colour bar.

    Args:
        model: the attacked logits model. images: (N, C, H, W), the images the attack was
            called with. result: its result.
        layers: names (``model.named_modules()``) of the layers to show [every ``nn.Conv2d``
            and ``nn.Linear``, outputs before the activation function].
        examples: attacks to show (rows) [3].
    Returns:
        A Figure with ``rows * (1 + layers)`` panels and one colour bar per column.
    """
    _check(images, result)
    rows = pick_examples(result, examples)
    named = dict(model.named_modules())
    if layers is None:
        chosen = _weighted_layers(model)
        if not chosen:
            raise ValueError("the model has no nn.Conv2d or nn.Linear layer: pass `layers`")
    else:
        unknown = [name for name in layers if name not in named or name == ""]
        if unknown:
            raise ValueError(
                f"unknown layer {unknown[0]!r}; known: {', '.join(n for n in named if n)}"
            )
        chosen = [(name, named[name]) for name in layers]
    idx = torch.tensor(rows)
    adv = result.adv_images[idx.to(result.adv_images.device)]
    clean = images[result.source_index[idx].to(images.device)].to(adv.device)
    acts_clean: dict[int, torch.Tensor] = {}
    acts_adv: dict[int, torch.Tensor] = {}
    modules = [m for _, m in chosen]
    with prepared_model(model) as net, torch.no_grad():
        with _hooks(modules, acts_clean):
            net(clean)
        with _hooks(modules, acts_adv):
            net(adv)
    columns: list[tuple[str, list[np.ndarray]]] = [
        (
            f"input\n{tuple(clean.shape[1:])}",
            [_as_map((adv[i] - clean[i]).abs().cpu()) for i in range(len(rows))],
        )
    ]
    for pos, (name, module) in enumerate(chosen):
        diff = (acts_adv[pos] - acts_clean[pos]).abs().cpu()
        kind = type(module).__name__
        grid = diff.dim() != 4 or diff.shape[2] * diff.shape[3] == 1
        columns.append(
            (
                f"{name} {kind}\n{tuple(diff.shape[1:])}" + (", units" if grid else ""),
                [_as_map(diff[i]) for i in range(len(rows))],
            )
        )
    ncol = len(columns)
    fig = Figure(figsize=(min(2.1 * ncol + 0.6, 13.0), 2.1 * len(rows) + 1.3), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), ncol, squeeze=False))
    for j, (title, maps) in enumerate(columns):
        top = max(float(np.nanmax(mp)) if np.isfinite(mp).any() else 0.0 for mp in maps)
        image = None
        for r, mp in enumerate(maps):
            ax = axes[r, j]
            image = ax.imshow(mp, cmap="magma", vmin=0, vmax=top if top > 0 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        assert image is not None
        bar = fig.colorbar(image, ax=list(axes[:, j]), orientation="horizontal", shrink=0.85)
        bar.set_label("max$_c$ |Δ|" if j else "max$_c$ |x' − x|", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    for r, i in enumerate(rows):
        tgt = "" if result.targets is None else f" (t {int(result.targets[i])})"
        axes[r, 0].set_ylabel(
            f"#{i}: {int(result.labels[i])}→{int(result.predictions[i])}{tgt}", fontsize=9
        )
    attack = str(result.extra.get("attack", "attack"))
    fig.suptitle(f"{attack}: |activation(adversarial) − activation(clean)|, layer by layer")
    return fig


def _last_spatial_conv(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last ``nn.Conv2d`` whose output on ``x`` has more than one position."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no nn.Conv2d layer: pass the Grad-CAM `layer`")
    store: dict[int, torch.Tensor] = {}
    with _hooks(convs, store), torch.no_grad():
        model(x[:1])
    spatial = [m for pos, m in enumerate(convs) if store[pos].shape[-1] * store[pos].shape[-2] > 1]
    if not spatial:
        raise ValueError("no convolution has a spatial output: pass the Grad-CAM `layer`")
    return spatial[-1]


def grad_cam_maps(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of ``classes`` (B,) on ``x`` (B, C, H, W) at ``layer``::

        alpha_k = mean_{i,j} dZ_c / dA^k_{ij},    L = ReLU(sum_k alpha_k A^k)

    bilinearly upsampled to (H, W); returns (B, H, W), unnormalised. Call it under
    :func:`~stadv.model_mode.prepared_model` (the input carries the gradient).
    """
    store: dict[int, torch.Tensor] = {}
    xa = x.detach().clone().requires_grad_(True)
    with _hooks([layer], store), torch.enable_grad():
        logits = model(xa)
        act = store[0]
        score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, act)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
    up = torch.nn.functional.interpolate(
        cam, size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    return up[:, 0].detach()


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    result: AttackResult,
    *,
    layer: nn.Module | None = None,
    examples: int = 4,
) -> Figure:
    """Grad-CAM maps of clean vs adversarial images, each for the class the model predicts.

    Columns: the clean image; its Grad-CAM for the clean prediction; the adversarial image;
    its Grad-CAM for the adversarial prediction. Each (clean, adversarial) pair of maps is
    scaled by the larger of the two maxima, so their strengths compare; the maps are drawn over
    the image and share one colour bar.

    Args:
        model: the attacked logits model. images: (N, C, H, W), the images the attack was
            called with. result: its result.
        layer: the convolution to explain [the last ``nn.Conv2d`` with a spatial output of more
            than one position: Grad-CAM of a 1 x 1 map is a constant].
        examples: attacks to show (rows) [4; the successful ones first].
    Returns:
        A Figure with ``rows * 4`` panels and one colour bar.
    """
    _check(images, result)
    rows = pick_examples(result, examples)
    idx = torch.tensor(rows)
    adv = result.adv_images[idx.to(result.adv_images.device)]
    clean = images[result.source_index[idx].to(images.device)].to(adv.device)
    with prepared_model(model) as net:
        target = _last_spatial_conv(net, clean) if layer is None else layer
        with torch.no_grad():
            pred_clean = net(clean).argmax(dim=1)
        pred_adv = result.predictions[idx.to(result.predictions.device)].to(adv.device)
        cam_clean = grad_cam_maps(net, clean, pred_clean, target).cpu()
        cam_adv = grad_cam_maps(net, adv, pred_adv, target).cpu()
    layer_name = next((n for n, m in model.named_modules() if m is target), type(target).__name__)
    fig = Figure(figsize=(10.0, 2.5 * len(rows) + 0.9), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), 4, squeeze=False))
    heat = None
    for r, i in enumerate(rows):
        scale = float(torch.maximum(cam_clean[r].max(), cam_adv[r].max()))
        scale = scale if scale > 0 else 1.0
        panels = (
            (clean[r], None, f"clean (label {int(result.labels[i])})"),
            (clean[r], cam_clean[r] / scale, f"Grad-CAM clean, class {int(pred_clean[r])}"),
            (adv[r], None, f"adversarial #{i} (pred {int(pred_adv[r])})"),
            (adv[r], cam_adv[r] / scale, f"Grad-CAM adv., class {int(pred_adv[r])}"),
        )
        for j, (img, cam, title) in enumerate(panels):
            ax = axes[r, j]
            ax.imshow(_img(img), cmap="gray", vmin=0, vmax=1)
            if cam is not None:
                heat = ax.imshow(cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    assert heat is not None
    bar = fig.colorbar(
        ScalarMappable(norm=Normalize(0, 1), cmap="jet"), ax=list(axes.flatten()), shrink=0.8
    )
    bar.set_label("Grad-CAM / max of the pair")
    attack = str(result.extra.get("attack", "attack"))
    fig.suptitle(f"{attack}: Grad-CAM at layer {layer_name} ({type(target).__name__})")
    return fig


#: The files :func:`save_views` writes, by view.
VIEW_FILES = {
    "representation_space": "representation_space.png",
    "activation_differences": "activation_differences.png",
    "grad_cam": "grad_cam.png",
}


def first_attacks(result: AttackResult, count: int) -> AttackResult:
    """The first ``count`` attacks (rows) of ``result`` (all of them when it has fewer), with
    their per-attack ``extra`` tensors; ``source_index`` still points into the same images."""
    if count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    n = len(result)
    k = min(count, n)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            fields[f.name] = value[:k]
    if len(result.stop_reason) == n:
        fields["stop_reason"] = tuple(result.stop_reason[:k])
    fields["extra"] = {
        key: v[:k] if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n else v
        for key, v in result.extra.items()
    }
    return dataclasses.replace(result, **fields)


def save_views(
    model: nn.Module,
    images: torch.Tensor,
    result: AttackResult,
    folder: str | Path,
    *,
    max_points: int = 300,
    examples: int = 4,
    dpi: int = 150,
) -> dict[str, Path]:
    """Render the three views of ``result`` into ``folder`` as PNGs (:data:`VIEW_FILES`).

    The representation space shows the first ``max_points`` attacks [300] (t-SNE's cost grows
    with the points); the activation differences and Grad-CAM show ``examples`` attacks [4],
    the successful ones first. Used by ``stadv views DIR`` (a finished ``stadv attack --out
    DIR``) and by the sweeps' trials (MLflow artifacts). Returns the paths by view.
    """
    out = Path(folder)
    shown = first_attacks(result, max_points)
    figures: dict[str, Callable[[], Figure]] = {
        "representation_space": lambda: representation_space(model, images, shown),
        "activation_differences": lambda: activation_differences(
            model, images, result, examples=min(examples, 3)
        ),
        "grad_cam": lambda: grad_cam(model, images, result, examples=examples),
    }
    paths = {}
    for name, draw in figures.items():
        fig = draw()
        paths[name] = save_png(fig, out / VIEW_FILES[name], dpi=dpi)
    return paths
