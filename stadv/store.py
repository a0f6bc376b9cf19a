"""The model store: trained checkpoints with a JSON sidecar, loaded safely.

Layout: ``<store>/<dataset>-<model>[-<variant>].pt`` (a ``state_dict``) beside
``<same>.json`` (architecture, dataset, epochs, seed, test accuracy, training seconds,
library versions and the checkpoint's SHA-256). The store folder is ``--store`` /
``$STADV_STORE``, else ``$XDG_CACHE_HOME/stadv/models`` (``~/.cache/stadv/models``).

Loading checks the checksum and the architecture and uses ``torch.load(weights_only=True)``;
a corrupt or mismatched file raises :class:`CheckpointError` naming it and is never
retrained over silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stadv.data import check_dataset_name, load_tensors
from stadv.devices import resolve_device
from stadv.models import build_model, check_model_name, count_parameters
from stadv.options import check_int
from stadv.train import Trainer, TrainLoss, default_recipe, evaluate, train_model

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt, mismatched or unreadable."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the sidecar JSON records about one checkpoint."""

    model: str
    dataset: str
    epochs: int
    seed: int
    test_accuracy: float
    train_seconds: float
    parameters: int
    sha256: str
    variant: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def default_store_dir() -> Path:
    env = os.environ.get("STADV_STORE")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stadv" / "models"


def resolve_store_dir(store: str | os.PathLike[str] | None = None) -> Path:
    return Path(store) if store is not None else default_store_dir()


def checkpoint_path(
    model: str, dataset: str, *, store: str | os.PathLike[str] | None = None, variant: str = ""
) -> Path:
    name = f"{check_dataset_name(dataset)}-{check_model_name(model)}"
    if variant:
        if not variant.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"variant {variant!r} must be letters, digits, '-' or '_'")
        name += f"-{variant}"
    return resolve_store_dir(store) / f"{name}.pt"


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: Path, info: CheckpointInfo) -> CheckpointInfo:
    """Write ``model``'s weights and the sidecar atomically; returns the info with its checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, tmp)
    digest = _sha256(tmp)
    info = CheckpointInfo(**{**asdict(info), "sha256": digest})
    side_tmp = path.with_name(f".{path.stem}.json.partial")
    side_tmp.write_text(json.dumps(asdict(info), indent=2, sort_keys=True))
    tmp.replace(path)
    side_tmp.replace(path.with_suffix(".json"))
    return info


def read_info(path: Path) -> CheckpointInfo:
    side = path.with_suffix(".json")
    try:
        raw = json.loads(side.read_text())
        return CheckpointInfo(**raw)
    except FileNotFoundError as err:
        raise CheckpointError(
            f"checkpoint {path} has no sidecar {side}; delete both to retrain"
        ) from err
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(
            f"sidecar {side} is unreadable ({err}); delete {path} and {side} to retrain"
        ) from err


def load_checkpoint(
    path: Path, *, model_name: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint into a fresh model of the recorded architecture (eval mode).

    Raises:
        CheckpointError: checksum mismatch, an architecture other than ``model_name``, or
            weights that do not fit the architecture; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    info = read_info(path)
    if model_name is not None and check_model_name(model_name) != info.model:
        raise CheckpointError(f"{path} holds model {info.model!r}, not {model_name!r}")
    digest = _sha256(path)
    if digest != info.sha256:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: SHA-256 {digest[:12]}... does not match its sidecar's "
            f"{info.sha256[:12]}...; delete it (and its .json) to retrain"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    model = build_model(info.model)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {info.model}: {err}") from err
    return model.eval(), info


def train_and_store(
    model_name: str,
    *,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    lr_decay_epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    variant: str = "",
    loss_fn: TrainLoss | None = None,
    train_limit: int | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    trainer: Trainer | None = None,
) -> tuple[nn.Module, CheckpointInfo]:
    """Train a model, evaluate it on the whole test split, and save it to the store.

    ``epochs`` and ``lr_decay_epochs`` default to the model's :func:`stadv.train.default_recipe`
    (6 epochs for A and B; 10 for C, the last 2 at lr / 10; with a ``trainer``, no decay
    unless asked). ``train_limit`` trains on the first N training images only (tests, smoke
    runs). ``trainer`` replaces :func:`stadv.train.train_model` (a defense's own schedule, e.g.
    the prototype conformity loss's warm-up; it gets ``loss_fn``) [None: train_model].

    Raises:
        ValueError: a bad argument (``epochs`` < 1, ``lr_decay_epochs`` outside
            [0, epochs), ``seed`` < 0, ``train_limit`` < 1, an unknown model or dataset),
            before any data is loaded, any training or any write to the store.
    """
    name = check_model_name(model_name)
    recipe = default_recipe(name)
    epochs = recipe.epochs if epochs is None else check_int("epochs", epochs, low=1)
    if lr_decay_epochs is None:
        own_recipe = epochs == recipe.epochs and trainer is None
        lr_decay_epochs = recipe.lr_decay_epochs if own_recipe else 0
    check_int("lr_decay_epochs", lr_decay_epochs, low=0)
    if lr_decay_epochs >= epochs:
        raise ValueError(f"lr_decay_epochs must be in [0, epochs={epochs}), got {lr_decay_epochs}")
    check_int("seed", seed, low=0)
    if train_limit is not None:
        check_int("train_limit", train_limit, low=1)
    ds = check_dataset_name(dataset)
    dev = resolve_device(device)
    train = load_tensors(ds, split="train", data_dir=data_dir)
    if train_limit is not None:
        train = train.slice(0, train_limit)
    test = load_tensors(ds, split="test", data_dir=data_dir)
    torch.manual_seed(seed)  # weight initialisation
    model = build_model(name).to(dev)
    report = (trainer or train_model)(
        model,
        train,
        epochs=epochs,
        lr_decay_epochs=lr_decay_epochs,
        seed=seed,
        device=dev,
        loss_fn=loss_fn,
        progress=progress,
    )
    acc = evaluate(model, test, device=dev)
    info = CheckpointInfo(
        model=name,
        dataset=ds,
        epochs=epochs,
        seed=seed,
        test_accuracy=acc,
        train_seconds=report.seconds,
        parameters=count_parameters(model),
        sha256="",
        variant=variant,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=library_versions(),
        extra={
            "device": str(dev),
            "train_images": len(train),
            "epoch_losses": list(report.losses),
            "lr_decay_epochs": lr_decay_epochs,
            **(extra or {}),
        },
    )
    info = save_checkpoint(model, checkpoint_path(name, ds, store=store, variant=variant), info)
    return model.eval(), info


def load_pretrained(
    name: str,
    *,
    dataset: str = "mnist",
    store: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    variant: str = "",
    train_if_missing: bool = True,
    epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> nn.Module:
    """Model ``name`` trained on ``dataset``, from the store; trained first if it is missing.

    Returns the model in eval mode on ``device`` (default: CUDA when available). A corrupt
    checkpoint raises :class:`CheckpointError`; it is never trained over.
    """
    dev = resolve_device(device)
    path = checkpoint_path(name, dataset, store=store, variant=variant)
    if path.exists() or path.with_suffix(".json").exists():
        model, _ = load_checkpoint(path, model_name=name, map_location=dev)
        return model.to(dev).eval()
    if not train_if_missing:
        raise CheckpointError(
            f"no checkpoint at {path} and train_if_missing is False; run `stadv train --model {name} --dataset {dataset}`"
        )
    if variant:
        raise CheckpointError(
            f"no checkpoint at {path}; variant {variant!r} must be trained by its own command"
        )
    model, _ = train_and_store(
        name,
        dataset=dataset,
        store=store,
        data_dir=data_dir,
        epochs=epochs,
        seed=seed,
        device=dev,
        progress=progress,
    )
    return model.to(dev).eval()


# -- other artefacts (pre-processing defenses, ...) ------------------------------------------


def artifact_path(
    kind: str, dataset: str, *, store: str | os.PathLike[str] | None = None, variant: str = ""
) -> Path:
    """``<store>/<dataset>-<kind>[-<variant>].pt`` for a non-classifier artefact (e.g. a denoiser)."""
    for label, value in (("kind", kind), ("variant", variant)):
        if value and not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{label} {value!r} must be letters, digits, '-' or '_'")
    if not kind:
        raise ValueError("kind must not be empty")
    name = f"{check_dataset_name(dataset)}-{kind}" + (f"-{variant}" if variant else "")
    return resolve_store_dir(store) / f"{name}.pt"


def save_module_state(module: nn.Module, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``module``'s ``state_dict`` and a JSON sidecar (``meta`` + ``sha256``) atomically.

    Returns the sidecar's content. Load it back with :func:`load_module_state`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
    sidecar = {**meta, "sha256": _sha256(tmp), "format_version": FORMAT_VERSION}
    side_tmp = path.with_name(f".{path.stem}.json.partial")
    side_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    tmp.replace(path)
    side_tmp.replace(path.with_suffix(".json"))
    return sidecar


def load_module_state(
    path: Path, *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``state_dict`` and sidecar written by :func:`save_module_state`.

    Checks the checksum and loads with ``weights_only=True``; raises :class:`CheckpointError`
    (naming the file) when it is missing, corrupt or unreadable.
    """
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(
            f"checkpoint {path} has no sidecar {side}; delete both to retrain"
        ) from err
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"sidecar {side} is unreadable ({err}); delete {path} and {side} to retrain"
        ) from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"sidecar {side} does not hold a JSON object")
    digest = _sha256(path)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its SHA-256 does not match {side}; delete both to retrain"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict")
    return state, meta
