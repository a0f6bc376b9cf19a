"""A prepared model as plain data for Ray's object store: a *bundle*.

The driver loads (or trains) every model once and sends each trial its bundle, so trials need
no shared disk. A bundle is a dict::

    {"arch": "B",                      # Model A, B or C
     "state": {...},                   # the classifier's state_dict (CPU tensors)
     "pre": None | nn.Module,          # a defense's pre-processor (on the CPU, eval mode)
     "info": {...}}                    # run parameters and metrics describing the model

and :func:`to_module` makes it an ``nn.Module`` again: the classifier, or
``nn.Sequential(pre-processor, classifier)`` (white-box: the attacks differentiate through
the pre-processor). Ray pickles the pre-processor as it is; its class comes from the
installed :mod:`defenses` package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from stadv.models import build_model


def bundle(
    arch: str,
    model: nn.Module,
    *,
    pre: nn.Module | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle of classifier ``model`` (architecture ``arch``) behind pre-processor ``pre``."""
    return {
        "arch": arch,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "pre": pre,
        "info": dict(info or {}),
    }


def to_module(data: Mapping[str, Any]) -> nn.Module:
    """The bundle's model (eval mode, CPU): the classifier behind its pre-processor, if any."""
    model = build_model(data["arch"])
    model.load_state_dict(data["state"])
    pre = data.get("pre")
    if pre is None:
        return model.eval()
    return nn.Sequential(pre, model).eval()
