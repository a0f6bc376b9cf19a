"""What the driver loads before the trials: the test images and the models, from the model
store, training a missing model once, here (never once per trial)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from stadv.data import load_tensors
from stadv.models import check_model_name
from stadv.store import CheckpointInfo, checkpoint_path, load_checkpoint, train_and_store
from stadv_sweeps.engine.bundles import bundle
from stadv_sweeps.engine.errors import SweepError

#: Smoke tests' undefended models: one epoch on 2,000 images, stored as variant "smoke" so a
#: quick model never stands in for a fully trained one.
SMOKE_VARIANT = "smoke"
SMOKE_TRAINING: dict[str, Any] = {"epochs": 1, "train_limit": 2000}


def prepare_data(dataset: str, n_images: int, data_dir: str | None) -> tuple[Any, Any]:
    """The first ``n_images`` test images and labels (raises naming the missing data)."""
    test = load_tensors(dataset, split="test", data_dir=data_dir)
    if n_images > len(test):
        raise SweepError(f"n_images={n_images} but the {dataset} test split has {len(test)}")
    part = test.slice(0, n_images)
    return part.images.contiguous(), part.labels.contiguous()


def stored_classifier(
    name: str,
    *,
    dataset: str,
    store: str | None,
    data_dir: str | None,
    variant: str = "",
    label: str = "",
    training: Callable[[], dict[str, Any]] | None = None,
) -> tuple[nn.Module, CheckpointInfo]:
    """Model ``name`` (store variant ``variant``) from the store, or trained once now with
    :func:`stadv.store.train_and_store` and stored; ``training()`` gives its further keyword
    arguments (called only when the model must be trained: it may load other models).

    Returns the model on the CPU, in eval mode, and its sidecar. Prints one line saying which,
    with the test accuracy; ``label`` names the model there.
    """
    label = label or f"model {name}"
    path = checkpoint_path(name, dataset, store=store, variant=variant)
    if path.exists() or path.with_suffix(".json").exists():
        model, info = load_checkpoint(path, model_name=name)
        how = f"loaded {path} (test accuracy {info.test_accuracy:.2%})"
    else:
        print(f"{label}: not in the store, training it once ({path}) ...", flush=True)
        model, info = train_and_store(
            name,
            dataset=dataset,
            store=store,
            data_dir=data_dir,
            variant=variant,
            progress=sys.stdout.isatty(),
            **(training() if training else {}),
        )
        how = f"trained in {info.train_seconds:.0f} s (test accuracy {info.test_accuracy:.2%})"
    print(f"{label}: {how}", flush=True)
    return model.cpu().eval(), info


def prepare_models(
    models: tuple[str, ...], dataset: str, smoke: bool, store: str | None, data_dir: str | None
) -> dict[str, Any]:
    """Each undefended model's bundle (smoke tests: the quick ``smoke`` variant)."""
    out = {}
    for name in dict.fromkeys(check_model_name(m) for m in models):
        model, _ = stored_classifier(
            name,
            dataset=dataset,
            store=store,
            data_dir=data_dir,
            variant=SMOKE_VARIANT if smoke else "",
            training=(lambda: SMOKE_TRAINING) if smoke else None,
        )
        out[name] = bundle(name, model)
    return out
