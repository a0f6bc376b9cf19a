"""Forward passes of images that differ from a clean image in a few pixels, recomputing only
what the changed pixels reach.

A convolution's output at position o depends only on the inputs in o's receptive field, so when
an image x' differs from x at k pixels, a layer's output differs from the clean one only inside
k boxes (one per changed pixel, grown by every convolution's kernel and stride on the way up).
:class:`LocalForward` runs the clean images once and keeps the activation the ``Flatten``
reads; for a batch of candidates it computes each convolution on the boxes alone, each box from
the candidate's image through the receptive fields below it (so overlapping boxes see every
change), and writes the last ones into a copy of that clean activation. The layers after the
``Flatten`` run on the whole activation. In exact arithmetic the logits are the full forward pass's; in float32 they
may differ by rounding where a kernel sums in another order (on this project's CPU they were
identical for Models A/B/C: ``benchmarks/local_forward.py`` reports the largest difference).

What it saves depends on how far a pixel reaches: for a 3x3 convolution on 26 x 26 inputs
(Model C's second layer) one pixel's box is 5 x 5 of 24 x 24 outputs; on Model B a pixel reaches
all 5 x 5 outputs of the second convolution, so nothing is saved there.

Supported networks (checked by :func:`local_layers`, a ``ValueError`` names the first module
that is not): an ``nn.Sequential`` (nested ones are flattened) of ``Conv2d`` (zero padding,
no dilation, one group) and element-wise modules (ReLU and kin, Dropout in eval mode,
Identity), then ``Flatten`` and anything after it.

Example::

    >>> fwd = LocalForward(model.eval(), clean)            # clean (P, C, H, W)
    >>> logits = fwd(images, owner, rows, cols)            # images (N, C, H, W) differ from
    ...                                                    # clean[owner] at (rows, cols) (N, k)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

#: modules applied position by position: they keep a box where it is
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
)


@dataclass(frozen=True)
class _Stage:
    """A convolution and the element-wise modules after it."""

    conv: nn.Conv2d
    after: tuple[nn.Module, ...]


def _leaves(net: nn.Module) -> list[nn.Module]:
    if isinstance(net, nn.Sequential):
        return [leaf for child in net for leaf in _leaves(child)]
    return [net]


def local_layers(
    net: nn.Module,
) -> tuple[tuple[nn.Module, ...], list[_Stage], list[nn.Module]]:
    """``net`` split into the element-wise modules before its first convolution, its
    convolution stages, and the modules from ``Flatten`` on.

    Raises ``ValueError`` naming the first module a local forward pass cannot handle (a network
    that is not a Sequential, a strided dilation, grouped or non-zero-padded convolution, a
    pooling layer, Dropout in training mode, or no ``Flatten``).
    """
    leaves = _leaves(net)
    stages: list[_Stage] = []
    pending: list[nn.Module] = []
    pre: tuple[nn.Module, ...] = ()
    for i, m in enumerate(leaves):
        if isinstance(m, nn.Flatten):
            if not stages:
                raise ValueError(f"local forward: no convolution before {m!r}")
            if stages:
                stages[-1] = _Stage(stages[-1].conv, stages[-1].after + tuple(pending))
            return pre, stages, leaves[i:]
        if isinstance(m, nn.Conv2d):
            bad = (
                m.groups != 1
                or tuple(m.dilation) != (1, 1)
                or m.padding_mode != "zeros"
                or isinstance(m.padding, str)
            )
            if bad:
                raise ValueError(
                    "local forward needs convolutions with one group, no dilation and integer "
                    f"zero padding; got {m!r}"
                )
            if stages:
                stages[-1] = _Stage(stages[-1].conv, stages[-1].after + tuple(pending))
            else:
                pre = tuple(pending)
            stages.append(_Stage(m, ()))
            pending = []
        elif isinstance(m, ELEMENTWISE):
            if isinstance(m, nn.Dropout) and m.training:
                raise ValueError(f"local forward needs Dropout in eval mode; got {m!r} training")
            pending.append(m)
        else:
            raise ValueError(
                "local forward handles Sequential networks of Conv2d and element-wise modules "
                f"up to a Flatten; got {type(m).__name__} ({m!r})"
            )
    raise ValueError("local forward needs an nn.Flatten after the convolutions; found none")


def runs_locally(net: nn.Module) -> bool:
    """Whether :class:`LocalForward` can run ``net`` (:func:`local_layers` accepts it)."""
    try:
        local_layers(net)
    except ValueError:
        return False
    return True


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The convolution's integer zero padding (:func:`local_layers` refuses string padding)."""
    return cast(tuple[int, int], tuple(conv.padding))


def _out_box(
    start: torch.Tensor, size: int, conv: nn.Conv2d, dim: int, n_in: int
) -> tuple[torch.Tensor, int, int]:
    """Output box (start (M,), size) of ``conv`` along ``dim`` holding every output that reads
    the input box [start, start + size), and the output length."""
    k, s, p = conv.kernel_size[dim], conv.stride[dim], _padding(conv)[dim]
    n_out = (n_in + 2 * p - k) // s + 1
    out_size = min((size + k - 2) // s + 1, n_out)
    # first output whose window [o s - p, o s - p + k) meets the box: ceil((start + p - k + 1) / s)
    first = torch.div(start + p - k + 1 + s - 1, s, rounding_mode="floor")
    return first.clamp(0, n_out - out_size), out_size, n_out


#: candidates run on boxes only while every stage's k boxes (per candidate) hold fewer than
#: this fraction of its output positions; otherwise the whole model runs: past it, gathering
#: and writing cost more than the positions saved (Model A, one thread: one pixel 4x faster
#: than the whole model; five pixels, 405 box positions of 400 at the second convolution, no
#: faster; Model B's second convolution is reached whole by any pixel).
LOCAL_FRACTION = 0.9


class LocalForward:
    """Logits of candidate images that differ from cached clean images at given pixels.

    Args:
        net: the model in eval mode (see :func:`local_layers` for what it may contain).
        clean: (P, C, H, W) the clean images; their activations are computed once here.

    Call: ``fwd(images, owner, rows, cols) -> (N, classes)`` with ``images`` (N, C, H, W) the
    candidates, ``owner`` (N,) the index of each one's clean image, ``rows`` and ``cols``
    (N, k) integer positions outside which ``images[n]`` equals ``clean[owner[n]]``. Runs
    under the caller's autocast; activations are kept in the clean pass's dtype.

    How: each changed pixel's box is followed up through the convolutions to the ``Flatten``;
    each box is computed from the image alone, every stage on the region the next one reads
    (a pyramid of receptive fields; zero where a region reaches into a convolution's padding),
    and written into a copy of the clean activation the ``Flatten`` reads, from which the
    layers after it run whole. Where some stage's k boxes would hold ``LOCAL_FRACTION`` of its
    outputs (:meth:`local` is False), the whole model runs instead.
    """

    def __init__(self, net: nn.Module, clean: torch.Tensor) -> None:
        self.net = net
        self.pre, self.stages, self.tail = local_layers(net)
        self._sizes: list[tuple[int, int]] = []  # each stage's input height and width
        with torch.no_grad():
            a = clean
            for m in self.pre:
                a = m(a)
            for stage in self.stages:
                self._sizes.append((a.shape[-2], a.shape[-1]))
                a = stage.conv(a)
                for m in stage.after:
                    a = m(a)
        self.flat_in = a  # (P, C', H', W'): the clean activation the tail flattens
        # reused across calls: a fresh tensor of this size per call costs ~8x the copy itself
        self._buffer: torch.Tensor | None = None

    def local(self, k: int) -> bool:
        """Whether candidates with ``k`` changed pixels run on boxes (else the whole model)."""
        return self._boxes(torch.zeros(1, k, dtype=torch.long)) is not None

    def _boxes(
        self, rows: torch.Tensor, cols: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor, int, int]] | None:
        """Each pixel's box (rows (N k,), cols (N k,), bh, bw) after every stage, or None where
        some stage's k boxes would cover ``LOCAL_FRACTION`` of its outputs."""
        k = rows.shape[1]
        cols = rows if cols is None else cols
        boxes = [(rows.reshape(-1), cols.reshape(-1), 1, 1)]
        for stage, (h, w) in zip(self.stages, self._sizes, strict=True):
            r, c, bh, bw = boxes[-1]
            r1, oh, h = _out_box(r, bh, stage.conv, 0, h)
            c1, ow, w = _out_box(c, bw, stage.conv, 1, w)
            if k * oh * ow >= LOCAL_FRACTION * h * w:
                return None
            boxes.append((r1, c1, oh, ow))
        return boxes

    def __call__(
        self, images: torch.Tensor, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            boxes = self._boxes(rows, cols)
            if boxes is None:
                out: torch.Tensor = self.net(images)
                return out
            n, k = rows.shape
            who = torch.arange(n, device=images.device).repeat_interleave(k)  # (N k,)
            r, c, _, _ = boxes[-1]
            a = self._write(self._clean(owner), who, r, c, self._pyramid(images, who, boxes))
            for m in self.tail:
                a = m(a)
            if self._buffer is not None and a.data_ptr() == self._buffer.data_ptr():
                a = a.clone()  # a tail that is a view of the reused buffer
        return a

    def _clean(self, owner: torch.Tensor) -> torch.Tensor:
        """The clean activations ``flat_in[owner]``, copied into the reused buffer."""
        n = owner.shape[0]
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = self.flat_in.new_empty((n, *self.flat_in.shape[1:]))
        return torch.index_select(self.flat_in, 0, owner, out=self._buffer[:n])

    def _pyramid(
        self,
        images: torch.Tensor,
        who: torch.Tensor,
        boxes: list[tuple[torch.Tensor, torch.Tensor, int, int]],
    ) -> torch.Tensor:
        """The outputs (N k, C', bh, bw) of the last local stage in its boxes, computed from
        the images through every earlier stage on the regions the next stage reads."""
        local = len(boxes) - 1
        # regions, top down: stage i's input rows [ri, ri + hi) for its output box
        regions = []
        r, c, bh, bw = boxes[-1]
        for i in range(local - 1, -1, -1):
            conv = self.stages[i].conv
            (sh, sw), (kh, kw), (ph, pw) = conv.stride, conv.kernel_size, _padding(conv)
            r, c = r * sh - ph, c * sw - pw
            bh, bw = (bh - 1) * sh + kh, (bw - 1) * sw + kw
            regions.append((r, c, bh, bw))
        regions.reverse()
        r, c, bh, bw = regions[0]
        a = self._gather(images, who, r, c, bh, bw)
        for m in self.pre:
            a = m(a)
        for i in range(local):
            conv = self.stages[i].conv
            a = F.conv2d(a, conv.weight, conv.bias, stride=conv.stride)
            for m in self.stages[i].after:
                a = m(a)
            if i + 1 < local and any(self.stages[i + 1].conv.padding):  # its padding reads zeros
                r, c, bh, bw = regions[i + 1]
                h, w = self._sizes[i + 1]
                a = a * self._inside(r, c, bh, bw, h, w).to(a.dtype)
        return a

    @staticmethod
    def _inside(r: torch.Tensor, c: torch.Tensor, bh: int, bw: int, h: int, w: int) -> torch.Tensor:
        """(M, 1, bh, bw) True where a region's position lies inside an h x w activation."""
        ri = r.unsqueeze(1) + torch.arange(bh, device=r.device)
        ci = c.unsqueeze(1) + torch.arange(bw, device=c.device)
        ok_r = (ri >= 0) & (ri < h)
        ok_c = (ci >= 0) & (ci < w)
        return (ok_r[:, :, None] & ok_c[:, None, :]).unsqueeze(1)

    def _gather(
        self,
        images: torch.Tensor,
        who: torch.Tensor,
        r: torch.Tensor,
        c: torch.Tensor,
        bh: int,
        bw: int,
    ) -> torch.Tensor:
        """(M, C, bh, bw) windows of ``images[who]`` at (r, c), zero outside the image."""
        h, w = images.shape[-2:]
        ri = (r.unsqueeze(1) + torch.arange(bh, device=r.device)).clamp(0, h - 1)
        ci = (c.unsqueeze(1) + torch.arange(bw, device=c.device)).clamp(0, w - 1)
        win = images[who[:, None, None], :, ri[:, :, None], ci[:, None, :]].permute(0, 3, 1, 2)
        return win * self._inside(r, c, bh, bw, h, w).to(win.dtype)

    @staticmethod
    def _write(
        clean: torch.Tensor,
        who: torch.Tensor,
        r0: torch.Tensor,
        c0: torch.Tensor,
        patch: torch.Tensor,
    ) -> torch.Tensor:
        """``clean`` (N, C, H, W, contiguous, written in place) with the boxes' values
        ``patch`` (N k, C, bh, bw) written at (r0, c0)."""
        _, ch, h, w = clean.shape
        bh, bw = patch.shape[-2:]
        dev = r0.device
        pos = (r0.view(-1, 1, 1) + torch.arange(bh, device=dev).view(1, -1, 1)) * w + (
            c0.view(-1, 1, 1) + torch.arange(bw, device=dev).view(1, 1, -1)
        )  # (N k, bh, bw) within a channel
        at = (who * (ch * h * w)).view(-1, 1, 1, 1) + (torch.arange(ch, device=dev) * (h * w)).view(
            1, -1, 1, 1
        )
        index = (at + pos.unsqueeze(1)).reshape(-1)
        clean.view(-1).scatter_(0, index, patch.reshape(-1).to(clean.dtype))
        return clean
