"""A prepared model as plain data, for Ray's object store: a *bundle*.

The driver loads (or trains) every model once and sends each trial its bundle, so trials need
no shared disk. A bundle is a dict::

    {"arch": "B",                      # Model A, B or C
     "state": {...},                   # the classifier's state_dict (CPU tensors)
     "pre": None | {"kind": "blur", "kernel_size": 3, "sigma": 1.0}
                 | {"kind": "denoiser", "channels": 32, "in_channels": 1, "state": {...}},
     "info": {...}}                    # run parameters and metrics describing the model

and :func:`to_module` makes it an ``nn.Module`` again: the classifier, or
``nn.Sequential(pre-processor, classifier)`` for the pre-processing defenses (white-box: the
attacks differentiate through the pre-processor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from defenses.blur import GaussianBlur
from defenses.denoiser import DenoisingAutoencoder
from stadv.models import build_model


def bundle(
    arch: str,
    model: nn.Module,
    *,
    pre: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle of classifier ``model`` (architecture ``arch``) behind pre-processor ``pre``."""
    return {
        "arch": arch,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "pre": dict(pre) if pre is not None else None,
        "info": dict(info or {}),
    }


def to_module(data: Mapping[str, Any]) -> nn.Module:
    """The bundle's model (eval mode, CPU): the classifier behind its pre-processor, if any."""
    model = build_model(data["arch"])
    model.load_state_dict(data["state"])
    pre = data.get("pre")
    if pre is None:
        return model.eval()
    if pre["kind"] == "blur":
        front: nn.Module = GaussianBlur(kernel_size=pre["kernel_size"], sigma=pre["sigma"])
    elif pre["kind"] == "denoiser":
        front = DenoisingAutoencoder(channels=pre["channels"], in_channels=pre["in_channels"])
        front.load_state_dict(pre["state"])
    else:
        raise ValueError(f"unknown pre-processor {pre['kind']!r}; known: blur, denoiser")
    return nn.Sequential(front, model).eval()
