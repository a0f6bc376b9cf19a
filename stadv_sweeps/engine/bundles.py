"""A prepared model as plain data for Ray's object store: a *bundle*.

The driver loads (or trains) every model once and sends each trial its bundle, so trials need
no shared disk. A bundle is a dict::

    {"arch": "B",                      # Model A, B or C
     "state": {...},                   # the classifier's state_dict (CPU tensors)
     "pre": None | nn.Module,          # a defense's pre-processor (on the CPU, eval mode)
     "info": {...},                    # run parameters and metrics describing the model
     "report": None | TrialMetrics}    # further metrics of each attack's result (a detector's)

and :func:`to_module` makes it an ``nn.Module`` again: the classifier, or
``nn.Sequential(pre-processor, classifier)`` (white-box: the attacks differentiate through
the pre-processor). Ray pickles the pre-processor as it is; its class comes from the
installed :mod:`defenses` package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from stadv.models import build_model
from stadv.result import AttackResult
from stadv.targets import TargetSpec


class TrialMetrics(Protocol):
    """Further metrics of a trial's attack result that its model's bundle brings (a detector's
    detection rate and adaptive success: :class:`defenses.vae_defense.DetectorMetrics`)."""

    def __call__(
        self,
        attack_name: str,
        attack: Any,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec,
        result: AttackResult,
    ) -> dict[str, float]: ...


def bundle(
    arch: str,
    model: nn.Module,
    *,
    pre: nn.Module | None = None,
    info: Mapping[str, Any] | None = None,
    report: TrialMetrics | None = None,
) -> dict[str, Any]:
    """The bundle of classifier ``model`` (architecture ``arch``) behind pre-processor ``pre``;
    ``report`` gives each trial's further metrics."""
    return {
        "arch": arch,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "pre": pre,
        "info": dict(info or {}),
        "report": report,
    }


def to_module(data: Mapping[str, Any]) -> nn.Module:
    """The bundle's model (eval mode, CPU): the classifier behind its pre-processor, if any."""
    model = build_model(data["arch"])
    model.load_state_dict(data["state"])
    pre = data.get("pre")
    if pre is None:
        return model.eval()
    return nn.Sequential(pre, model).eval()
