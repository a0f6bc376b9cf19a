"""The defense sweep's models: every (model, defense) as a bundle, trained once if missing.

* ``none``: the undefended model (smoke tests: its quick ``smoke`` variant), as the grid
  sweeps use it;
* ``fgsm``, ``ensemble``, ``pgd``: adversarially trained from scratch with the library's losses
  (:mod:`defenses.adversarial_training`) by :func:`stadv.store.train_and_store`, stored as
  ``<dataset>-<model>-<variant>.pt`` (:func:`defense_spec.variant`) with the defense and its
  parameters in the sidecar, as ``stadv train --defense`` stores them;
* ``blur``: :class:`defenses.blur.GaussianBlur` in front of the undefended model;
* ``denoiser``: the denoising autoencoder in front of the undefended model, trained by the
  same code as ``stadv train-denoiser`` and stored as ``<dataset>-denoiser[-<variant>].pt``;
* ``distillation``, ``pcl``, ``pcl-pgd``: trained classifiers like adversarial training
  (distillation's teacher is stored and reused too: :mod:`defenses.distillation`);
* ``vae``: the undefended model, with the VAE detector (stored as ``<dataset>-vae[-<variant>]``,
  threshold fitted on clean validation images from the training split) in the bundle's
  ``report``: each trial adds its detection rate, ROC AUC and adaptive success
  (:mod:`defenses.vae_defense`).

A stored model whose sidecar records other training settings than the sweep asks for is an
error naming both, never used silently. Each bundle carries its clean test accuracy on the
whole test split (the sidecar's, or measured here for the pre-processing defenses; smoke
tests measure every model on the first 2,000 test images).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from defenses.base import (
    Defense,
    DefenseContext,
    StoredDefenseMismatch,
    check_recorded,
    is_detector,
)
from defenses.vae_defense import DetectorMetrics
from defenses.vae_detector import VAEDetector
from stadv.data import TensorData, load_tensors
from stadv.models import check_model_name
from stadv.store import CheckpointInfo, checkpoint_path
from stadv.train import default_recipe, evaluate
from stadv_sweeps.engine.bundles import bundle
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.prepare import SMOKE_TRAINING, SMOKE_VARIANT, stored_classifier
from stadv_sweeps.plans.defense_spec import DEFENSE_LABELS, DefenseSpec, variant_suffix


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

    def context(self, defense: str) -> DefenseContext:
        """What defense ``defense`` is built with: the store, the data, its variant suffix."""
        return DefenseContext(
            dataset=self.spec.dataset,
            store=self.store,
            data_dir=self.data_dir,
            variant=variant_suffix(defense, self.s),
            progress=sys.stdout.isatty(),
            classifier=lambda m: self.undefended(m)[0],
        )

    def bundle(self, name: str, defense: str) -> dict[str, Any]:
        label = f"model {name} {DEFENSE_LABELS[defense]}"
        made = self.s.defense(defense)
        ctx = self.context(defense)
        if made.trains:
            model, info = self.trained(name, defense, made, ctx, label)
            params = {
                "defense_variant": info.variant,
                "defense_epochs": info.epochs,
                "defense_train_images": info.extra.get("train_images", ""),
                "defense_train_seconds": info.train_seconds,
            }
            return bundle(name, model, info=_info(self.accuracy(model, info), params))
        base, base_info = self.undefended(name)
        if is_detector(made):
            return self.detector_bundle(name, defense, made, ctx, label)
        try:
            front = made.front(ctx)
        except StoredDefenseMismatch as err:
            raise SweepError(str(err)) from None
        if front is None:
            params = {"defense_variant": base_info.variant or "default"}
            return bundle(name, base, info=_info(self.accuracy(base, base_info), params))
        params = {
            "defense_variant": ctx.variant or "default",
            **{f"{defense}_{k}": v for k, v in made.identity().items()},
        }
        accuracy = self.accuracy(nn.Sequential(front, base))
        print(f"{label}: test accuracy {accuracy:.2%} (in front of the undefended model)")
        return bundle(name, base, pre=front.cpu().eval(), info=_info(accuracy, params))

    def detector_bundle(
        self, name: str, defense: str, made: Defense, ctx: DefenseContext, label: str
    ) -> dict[str, Any]:
        """The undefended model's bundle with the defense's fitted detector as its ``report``."""
        base, base_info = self.undefended(name)
        try:
            detector = made.detector(base, ctx)  # type: ignore[attr-defined]
        except StoredDefenseMismatch as err:
            raise SweepError(str(err)) from None
        if not isinstance(detector, VAEDetector):
            raise SweepError(f"defense {defense}: its detector is no VAEDetector: {detector!r}")
        fitted = detector.fitted_on
        params = {
            "defense_variant": ctx.variant or "default",
            **{f"{defense}_{k}": v for k, v in made.identity().items()},
            "detector_threshold": float(detector.threshold),
            "detector_validation_images": fitted.get("images", ""),
            "detector_validation_sha256": str(fitted.get("sha256", ""))[:16],
        }
        print(
            f"{label}: threshold {float(detector.threshold):.4g} fitted on "
            f"{fitted.get('images')} clean validation images (training split)",
            flush=True,
        )
        return bundle(
            name,
            base,
            info=_info(self.accuracy(base, base_info), params),
            report=DetectorMetrics(detector),
        )

    def trained(
        self, name: str, defense: str, made: Defense, ctx: DefenseContext, label: str
    ) -> tuple[nn.Module, CheckpointInfo]:
        """The defense's trained classifier of ``name``, from the store or trained now; a
        stored one trained otherwise than asked is a ``SweepError`` naming the difference."""
        recipe = made.training(name, ctx)
        if recipe is None:
            raise SweepError(f"defense {defense} trains no classifier")

        def training() -> dict[str, Any]:
            return {
                "epochs": recipe.epochs,
                "train_limit": recipe.train_limit,
                "seed": recipe.seed,
                # loads the ensemble's static models (trains distillation's teacher) only now
                "loss_fn": recipe.make_loss(),
                "trainer": recipe.trainer,
                "extra": {
                    "defense": defense,
                    "defense_params": recipe.params,
                    "preset": self.spec.preset,
                },
            }

        model, info = stored_classifier(
            name,
            dataset=self.spec.dataset,
            store=self.store,
            data_dir=self.data_dir,
            variant=recipe.variant,
            label=label,
            training=training,
        )
        recorded = {
            "epochs": info.epochs,
            "train_images": info.extra.get("train_images"),
            **info.extra.get("defense_params", {}),
        }
        expected = {
            "epochs": recipe.epochs or default_recipe(name).epochs,
            "train_images": self.train_images(recipe.train_limit),
            **recipe.params,
        }
        path = checkpoint_path(name, self.spec.dataset, store=self.store, variant=recipe.variant)
        try:
            check_recorded(str(path), recorded, expected)
        except StoredDefenseMismatch as err:
            raise SweepError(str(err)) from None
        return model, info


def _info(accuracy: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": {"test_accuracy": float(accuracy)}, "params": params}
