"""The defense sweep's models: every (model, defense) as a bundle, trained once if missing.

* ``none``: the undefended model (smoke tests: its quick ``smoke`` variant), as the grid
  sweeps use it;
* ``fgsm``, ``ensemble``, ``pgd``: adversarially trained from scratch with the library's losses
  (:mod:`defenses.adversarial_training`) by :func:`stadv.store.train_and_store`, stored as
  ``<dataset>-<model>-<variant>.pt`` (:func:`defense_spec.variant`) with the defense and its
  parameters in the sidecar, as ``stadv train --defense`` stores them;
* ``blur``: :class:`defenses.blur.GaussianBlur` in front of the undefended model;
* ``denoiser``: the denoising autoencoder in front of the undefended model, trained by the
  same code as ``stadv train-denoiser`` and stored as ``<dataset>-denoiser[-<variant>].pt``.

A stored model whose sidecar records other training settings than the sweep asks for is an
error naming both, never used silently. Each bundle carries its clean test accuracy on the
whole test split (the sidecar's, or measured here for the pre-processing defenses; smoke
tests measure every model on the first 2,000 test images).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from torch import nn

from defenses.adversarial_training import (
    EnsembleAdversarialLoss,
    FGSMAdversarialLoss,
    PGDAdversarialLoss,
)
from defenses.blur import GaussianBlur
from defenses.denoiser import DEFAULT_NOISE_STD, denoiser_path, load_denoiser
from stadv.cli_defense import cmd_train_denoiser
from stadv.data import TensorData, load_tensors
from stadv.models import MODELS, check_model_name
from stadv.store import CheckpointInfo, checkpoint_path
from stadv.train import default_recipe, evaluate
from stadv_sweeps.engine.bundles import bundle
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.prepare import SMOKE_TRAINING, SMOKE_VARIANT, stored_classifier
from stadv_sweeps.plans.defense_spec import DEFENSE_LABELS, TRAINED, DefenseSpec, variant

DENOISER_CHANNELS = 32


class DefendedModels:
    """Builds the bundles of one :class:`DefenseSpec`, loading each stored model once."""

    def __init__(self, spec: DefenseSpec, store: str | None, data_dir: str | None) -> None:
        self.spec = spec
        self.s = spec.settings
        self.store = store
        self.data_dir = data_dir
        self._undefended: dict[str, tuple[nn.Module, CheckpointInfo]] = {}
        self._test: TensorData | None = None
        self._n_train: int | None = None

    # -- data ---------------------------------------------------------------------------------
    def accuracy(self, model: nn.Module, info: CheckpointInfo | None = None) -> float:
        """Clean accuracy on the spec's test images: the sidecar's when that is the whole
        split (it was measured there at training time), else measured now."""
        if info is not None and self.spec.eval_images is None:
            return info.test_accuracy
        if self._test is None:
            test = load_tensors(self.spec.dataset, split="test", data_dir=self.data_dir)
            limit = self.spec.eval_images
            self._test = test if limit is None else test.slice(0, min(limit, len(test)))
        # on the CPU: a model trained on a GPU here, or a static model an ensemble training
        # moved there, must sit on one device with its pre-processor
        return evaluate(model.cpu().eval(), self._test)

    def train_images(self, limit: int | None) -> int:
        """How many training images a limit means (the whole split when None)."""
        if self._n_train is None:
            train = load_tensors(self.spec.dataset, split="train", data_dir=self.data_dir)
            self._n_train = len(train)
        return self._n_train if limit is None else min(limit, self._n_train)

    # -- the models ---------------------------------------------------------------------------
    def all(self) -> dict[str, Any]:
        """Bundles keyed ``"<model>/<defense>"`` for every model and defense of the spec."""
        out = {}
        for name in dict.fromkeys(check_model_name(m) for m in self.spec.models):
            for defense in self.spec.defenses:
                held = self.bundle(name, defense)
                held["info"]["params"]["eval_images"] = self.spec.eval_images or "all"
                out[f"{name}/{defense}"] = held
        return out

    def undefended(self, name: str) -> tuple[nn.Module, CheckpointInfo]:
        if name not in self._undefended:
            self._undefended[name] = stored_classifier(
                name,
                dataset=self.spec.dataset,
                store=self.store,
                data_dir=self.data_dir,
                variant=SMOKE_VARIANT if self.spec.smoke else "",
                training=(lambda: SMOKE_TRAINING) if self.spec.smoke else None,
            )
        return self._undefended[name]

    def bundle(self, name: str, defense: str) -> dict[str, Any]:
        label = f"model {name} {DEFENSE_LABELS[defense]}"
        if defense in TRAINED:
            model, info = self.adversarial(name, defense, label)
            params = {
                "defense_variant": info.variant,
                "defense_epochs": info.epochs,
                "defense_train_images": info.extra.get("train_images", ""),
            }
            return bundle(name, model, info=_info(self.accuracy(model, info), params))
        base, base_info = self.undefended(name)
        if defense == "none":
            params = {"defense_variant": base_info.variant or "default"}
            return bundle(name, base, info=_info(self.accuracy(base, base_info), params))
        pre: dict[str, Any]
        if defense == "blur":
            front: nn.Module = GaussianBlur(
                kernel_size=self.s.blur_kernel_size, sigma=self.s.blur_sigma
            )
            pre = {"kind": "blur", "kernel_size": front.kernel_size, "sigma": front.sigma}
            params = {"blur_kernel_size": front.kernel_size, "blur_sigma": front.sigma}
        else:
            front, meta = self.denoiser()
            pre = {
                "kind": "denoiser",
                "channels": front.channels,
                "in_channels": front.in_channels,
                "state": {k: v.detach().cpu() for k, v in front.state_dict().items()},
            }
            params = {
                "defense_variant": meta.get("variant") or "default",
                "denoiser_epochs": meta.get("epochs", ""),
                "denoiser_train_images": meta.get("train_images", ""),
            }
        accuracy = self.accuracy(nn.Sequential(front, base))
        print(f"{label}: test accuracy {accuracy:.2%} (in front of the undefended model)")
        return bundle(name, base, pre=pre, info=_info(accuracy, params))

    def adversarial(self, name: str, defense: str, label: str) -> tuple[nn.Module, CheckpointInfo]:
        """The adversarially trained model, from the store or trained now."""
        s = self.s
        stored_as = variant(defense, s)
        static = self.static_names(name)
        expected_params: dict[str, Any] = {"epsilon": s.epsilon}
        if defense == "pgd":
            expected_params.update(
                steps=s.pgd_steps, alpha=s.pgd_alpha, adv_weight=s.pgd_adv_weight
            )
        if defense == "ensemble":
            expected_params["static_models"] = static

        def training() -> dict[str, Any]:
            loss: Any
            if defense == "fgsm":
                loss = FGSMAdversarialLoss(epsilon=s.epsilon)
            elif defense == "pgd":
                loss = PGDAdversarialLoss(
                    epsilon=s.epsilon,
                    alpha=s.pgd_alpha,
                    steps=s.pgd_steps,
                    adv_weight=s.pgd_adv_weight,
                )
            else:
                models = tuple(self.undefended(m)[0] for m in static)
                loss = EnsembleAdversarialLoss(static_models=models, epsilon=s.epsilon)
            params = {k: x for k, x in vars(loss).items() if k != "static_models"}
            if defense == "ensemble":
                params["static_models"] = static
            return {
                "epochs": s.epochs,
                "train_limit": s.train_limit,
                "seed": s.seed,
                "loss_fn": loss,
                "extra": {"defense": defense, "defense_params": params, "preset": self.spec.preset},
            }

        model, info = stored_classifier(
            name,
            dataset=self.spec.dataset,
            store=self.store,
            data_dir=self.data_dir,
            variant=stored_as,
            label=label,
            training=training,
        )
        recorded = {
            "epochs": info.epochs,
            "train_images": info.extra.get("train_images"),
            **info.extra.get("defense_params", {}),
        }
        expected = {
            "epochs": s.epochs or default_recipe(name).epochs,
            "train_images": self.train_images(s.train_limit),
            **expected_params,
        }
        path = checkpoint_path(name, self.spec.dataset, store=self.store, variant=stored_as)
        _check_recorded(str(path), recorded, expected)
        return model, info

    def static_names(self, name: str) -> list[str]:
        """The ensemble's static models for ``name`` (default: the other architectures)."""
        if self.s.static_models is not None:
            return [check_model_name(m) for m in self.s.static_models]
        return [m for m in MODELS if m != name]

    def denoiser(self) -> tuple[Any, dict[str, Any]]:
        """The denoising autoencoder and its sidecar, trained once if missing."""
        s = self.s
        stored_as = variant("denoiser", s)
        path = denoiser_path(self.spec.dataset, store=self.store, variant=stored_as)
        if not path.is_file():
            print(f"denoiser: not in the store, training it once ({path}) ...", flush=True)
            cmd_train_denoiser(
                argparse.Namespace(
                    noise_std=DEFAULT_NOISE_STD,
                    epochs=s.denoiser_epochs,
                    channels=DENOISER_CHANNELS,
                    train_limit=s.denoiser_train_limit,
                    seed=s.seed,
                    device=None,
                    dataset=self.spec.dataset,
                    data_dir=self.data_dir,
                    data_source=None,
                    no_download=False,
                    quiet=True,
                    store=self.store,
                    variant=stored_as,
                )
            )
        model = load_denoiser(self.spec.dataset, store=self.store, variant=stored_as)
        meta = json.loads(path.with_suffix(".json").read_text())
        recorded = {k: meta.get(k) for k in ("epochs", "train_images", "seed", "noise_std")}
        expected = {
            "epochs": s.denoiser_epochs,
            "train_images": self.train_images(s.denoiser_train_limit),
            "seed": s.seed,
            "noise_std": DEFAULT_NOISE_STD,
            "channels": DENOISER_CHANNELS,
        }
        _check_recorded(str(path), {**recorded, "channels": model.channels}, expected)
        return model, meta


def _info(accuracy: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": {"test_accuracy": float(accuracy)}, "params": params}


def _check_recorded(path: str, recorded: dict[str, Any], expected: dict[str, Any]) -> None:
    """``SweepError`` when a stored model was trained otherwise than this sweep asks."""
    for key, want in expected.items():
        have = recorded.get(key)
        if json.dumps(have) != json.dumps(want) and not _close(have, want):
            raise SweepError(
                f"{path} was trained with {key}={have!r} but this sweep asks for {want!r}; "
                "delete it (and its .json) to retrain, or pass matching training options"
            )


def _close(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers) and isinstance(b, numbers) and abs(a - b) <= 1e-12 * max(1, abs(b))
    )
