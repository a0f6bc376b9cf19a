"""What every defense is, for the command line and the sweeps: a frozen dataclass of options.

A defense is registered by name in :mod:`defenses.registry` and built from its options
(:mod:`stadv.options`: the same schema the attacks use). It contributes one or both of

* a **trained classifier** (:meth:`Defense.training` returns the :class:`Training` recipe: a
  per-batch loss for :func:`stadv.train.train_model`, the store variant and what the
  checkpoint's sidecar records), as adversarial training does;
* a **pre-processor** in front of the classifier (:meth:`Defense.front` returns an
  ``nn.Module``; ``nn.Sequential(front, classifier)`` is the defended model, which white-box
  attacks differentiate through), as blur and the denoiser do.

The caller (``stadv train --defense``, the defense sweep) supplies a :class:`DefenseContext`:
where the store and data are, the variant suffix naming its settings, and how to load an
undefended classifier. Nothing here prints or talks to Ray or MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from stadv.train import Trainer, TrainLoss

D = TypeVar("D")


class StoredDefenseMismatch(ValueError):
    """A stored defense (checkpoint or pre-processor) was trained otherwise than asked."""


@dataclass(frozen=True)
class DefenseContext:
    """What building a defense needs from its caller.

    Attributes:
        dataset: the data set [``"mnist"``]. store, data_dir: as :func:`stadv.store.load_pretrained`.
        device: where to train [None: CUDA when available].
        variant: the suffix naming the caller's settings in the store (a preset name such as
            ``"cpu"``, or a hash; ``""`` for the paper's settings).
        progress: show progress bars while training [False].
        classifier: loads an undefended classifier by name (the ensemble's static models);
            None: the caller provides none.
        train: train (and store) a missing trained part, and check a stored one against the
            options [True]; False: load what is stored as it is, a missing one is an error.
    """

    dataset: str = "mnist"
    store: str | os.PathLike[str] | None = None
    data_dir: str | os.PathLike[str] | None = None
    device: str | torch.device | None = None
    variant: str = ""
    progress: bool = False
    classifier: Callable[[str], nn.Module] | None = None
    train: bool = True


@dataclass(frozen=True)
class Training:
    """How a defense trains its classifier (what :func:`stadv.store.train_and_store` takes).

    ``make_loss()`` builds the per-batch loss (only when the classifier is trained: it may
    load or train other models; None: the plain cross-entropy); ``trainer`` replaces
    :func:`stadv.train.train_model` when the defense's schedule is not one loss over one loop
    (None: train_model); ``variant`` is the store variant (``<dataset>-<model>-<variant>.pt``);
    ``params`` go to the
    checkpoint's sidecar as ``extra["defense_params"]`` and are checked against it when the
    checkpoint is loaded again; ``epochs`` / ``train_limit`` None mean the model's recipe / the
    whole training split.
    """

    make_loss: Callable[[], TrainLoss | None]
    variant: str
    params: dict[str, Any]
    epochs: int | None = None
    train_limit: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    trainer: Trainer | None = None


class Defense(Protocol):
    """The interface of a registered defense (a frozen dataclass of its options)."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: the store variant's stem of a trained defense (``adv-pgd``); "" for none
    store_variant: ClassVar[str]
    #: whether :meth:`training` returns a recipe (the defended classifier is trained)
    trains: ClassVar[bool]

    def training(self, model: str, ctx: DefenseContext) -> Training | None:
        """The recipe of the defended classifier of ``model``, or None (the undefended one)."""
        ...

    def front(self, ctx: DefenseContext) -> nn.Module | None:
        """The pre-processor (loaded or trained now), or None."""
        ...

    def identity(self) -> dict[str, Any]:
        """The options that define the defended model (trial keys, store variants)."""
        ...


class Detector(Protocol):
    """A defense that leaves the classifier as it is and flags adversarial inputs instead (the
    VAE detector): its row of a defense table reports detection, not robustness."""

    def detector(self, classifier: nn.Module, ctx: DefenseContext) -> nn.Module:
        """The detector of ``classifier``'s inputs, its threshold fitted (trained or loaded now)."""
        ...


def is_detector(defense: object) -> bool:
    """Whether ``defense`` (an instance or a class) is a :class:`Detector`."""
    return callable(getattr(defense, "detector", None))


def store_variant(defense: Defense, suffix: str) -> str:
    """``<stem>-<suffix>`` without empty parts (``adv-pgd-cpu``, ``adv-pgd``, ``cpu``)."""
    return "-".join(part for part in (defense.store_variant, suffix) if part)


def option_values(defense: Any) -> dict[str, Any]:
    """Every field of a defense as JSON-able values (tuples as lists)."""
    out = {}
    for f in dataclasses.fields(defense):
        value = getattr(defense, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_settings(cls: type[D], settings: Mapping[str, Any]) -> D:
    """Defense ``cls`` built from flat settings (a sweep's or a command line's): its field
    ``f`` reads ``settings["<name>_<f>"]`` (``--pgd-steps``, ``--blur-sigma``), else the
    shared ``settings["<f>"]`` (``epsilon``, ``train_limit``, ``epochs``, ``seed``), else keeps
    its default. ``ValueError`` (the class's own check) names a bad value."""
    name: str = getattr(cls, "name")  # noqa: B009  (a ClassVar of every defense class)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        for key in (f"{name}_{f.name}", f.name):
            if key in settings:
                values[f.name] = settings[key]
                break
    return cls(**values)


def check_recorded(path: str, recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """:class:`StoredDefenseMismatch` naming the first setting a stored defense was trained
    with that differs from what is asked (numbers compared to 1e-12 relative)."""
    for key, want in expected.items():
        have = recorded.get(key)
        if have == want or (
            isinstance(have, (int, float))
            and isinstance(want, (int, float))
            and abs(have - want) <= 1e-12 * max(1.0, abs(want))
        ):
            continue
        if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
            if list(have) == list(want):
                continue
        raise StoredDefenseMismatch(
            f"{path} was trained with {key}={have!r} but {want!r} is asked; delete it (and its "
            ".json) to train it again, or ask for matching settings"
        )
