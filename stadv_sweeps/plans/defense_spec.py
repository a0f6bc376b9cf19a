"""The defense sweep's trials: {attacks} x {defenses} x {models}, and how defenses are trained.

A :class:`DefenseSpec` names the attacks (``fgsm``, ``cw``, ``stadv``, ``deepfool``, ``jsma``,
``few-pixel``; ``pgd`` also runs), the defenses (the library's names: ``none``, ``fgsm``,
``ensemble``, ``pgd`` adversarial training, ``blur``, ``denoiser``, ``distillation``, ``pcl``,
``pcl-pgd``, and the ``vae`` detector), the models, the images and target protocol, each attack's
options and the :class:`DefenseSettings` that say how a missing defended model is trained.
:func:`build_defense_points` validates all of it (a bad name or value raises ``SweepError``
naming it) and returns one :class:`spec.Point` per (model, defense, attack).

Trained defenses are stored under a variant that names their settings (:func:`variant`):
``adv-pgd`` for the paper's (the same checkpoint ``stadv train --defense pgd`` writes),
``adv-pgd-cpu`` / ``adv-pgd-smoke`` for the CPU default and the smoke test, and
``adv-pgd-t<hash>`` for any other setting, so a quick model never stands in for another.

Target protocols: DeepFool is untargeted only, so its trials run untargeted whatever the
sweep's protocol (:func:`attack_targets`; the table counts them as untargeted success);
JSMA is targeted only, so an untargeted sweep cannot include it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from defenses.base import Defense, from_settings, is_detector
from defenses.base import store_variant as defense_store_variant
from defenses.registry import DEFENSES, defense_class
from defenses.registry import label as defense_label
from stadv.models import check_model_name
from stadv.options import check_choice
from stadv.registry import ATTACKS
from stadv.registry import label as attack_label
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.engine.spec import (
    MODEL_COST,
    Point,
    check_common,
    digest,
    key_options,
    make_attack,
)
from stadv_sweeps.engine.spec import attack_options as spec_attack_options

#: How the tables name things (from the registries: a new attack or defense brings its label).
DEFENSE_LABELS = {name: defense_label(name) for name in DEFENSES}
ATTACK_LABELS = {name: attack_label(name) for name in ATTACKS}
#: The defenses that detect instead of defending the classifier (their rows report detection).
DETECTORS: tuple[str, ...] = tuple(n for n in DEFENSES if is_detector(defense_class(n)))


@dataclass(frozen=True)
class DefenseSettings:
    """How missing defended models are trained, and the blur's parameters.

    ``train_limit``/``epochs`` (None: all 60,000 images / the model's recipe, 6 epochs for A
    and B, 10 for C) apply to the three adversarial trainings (Adam 1e-3, batch 64, ``seed``);
    FGSM and ensemble training use FGSM with ``epsilon`` (half clean, half adversarial loss),
    PGD training ``pgd_steps`` steps of ``pgd_alpha`` in the ``epsilon`` ball with
    ``pgd_adv_weight`` of the loss on the adversarial half (1.0, Madry et al.'s: adversarial
    loss only); the ensemble's static models are ``static_models`` (None: the other
    architectures), undefended. The denoiser trains ``denoiser_epochs`` on
    ``denoiser_train_limit`` images with noise 0.1 (``stadv train-denoiser``). Distillation
    (teacher and student) and the PCL trainings use ``train_limit``/``epochs`` too (PCL: its
    phase after ``pcl_warmup_epochs`` of cross-entropy); the VAE detector trains
    ``vae_epochs`` on ``vae_train_limit`` images, the last ``vae_n_validation`` of them held
    out for its threshold. Options of those defenses without a field here live in ``extra``
    as ``<defense>_<option>`` (``distillation_temperature``, ``pcl-pgd_steps``).
    """

    train_limit: int | None = field(
        default=None, metadata={"flag": "--adv-train-limit", "none": "all"}
    )
    epochs: int | None = field(default=None, metadata={"flag": "--adv-epochs", "none": "recipe"})
    epsilon: float = field(default=0.3, metadata={"flag": "--adv-epsilon"})
    pgd_steps: int = 40
    pgd_alpha: float = 0.01
    pgd_adv_weight: float = 1.0
    static_models: tuple[str, ...] | None = None
    denoiser_epochs: int = 5
    denoiser_train_limit: int | None = field(default=None, metadata={"none": "all"})
    vae_epochs: int = 5
    vae_train_limit: int | None = field(default=None, metadata={"none": "all"})
    blur_kernel_size: int = 3
    blur_sigma: float = 1.0
    seed: int = field(default=0, metadata={"option": False})

    #: options of other registered defenses, as ``"<name>_<option>": value``
    extra: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Every setting by name, the ``extra`` ones included (what defenses are built from)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**{k: v for k, v in values.items() if k != "extra"}, **self.extra}

    def defense(self, name: str) -> Defense:
        """Defense ``name`` with these settings (``SweepError`` naming a bad value)."""
        try:
            made: Defense = from_settings(defense_class(name), self.flat())
        except (ValueError, TypeError) as err:
            raise SweepError(f"defense {name}: {err}") from None
        return made

    def relevant(self, defense: str) -> dict[str, Any]:
        """The settings that define defense ``defense``'s stored model (or the blur)."""
        return self.defense(defense).identity()


#: The named settings. ``paper``: Tramèr et al.'s and Madry et al.'s (all data, the model's
#: epochs, PGD 40 x 0.01), for a GPU. ``cpu`` (the default): 10,000 images, one epoch, PGD
#: 20 x 0.02 (the same 0.4 path length) with half the loss on clean images (PGD-only training
#: from scratch collapsed to chance at this size: Model A 9.82 % clean accuracy, measured),
#: denoiser 2 epochs on 10,000 images; see
#: ``sweeps/defenses.py`` for its cost. ``smoke``: 1,000 images (the denoiser 2,000), seconds.
#: Distillation and PCL follow ``train_limit``/``epochs`` (cpu: one epoch of cross-entropy
#: warm-up, then one of PCL; PCL-PGD crafts 20 x 0.02 as the CPU PGD training); the VAE
#: detector: cpu 5 epochs on all training images but the 1,000 held out (2 epochs on 9,000
#: left the VAE's reconstructions classified as their source's label 24 % of the time on A,
#: measured; its training is cheap beside the classifiers'); paper 5 epochs, MagNet's 5,000
#: validation images.
PRESETS: dict[str, DefenseSettings] = {
    "paper": DefenseSettings(),
    "cpu": DefenseSettings(
        train_limit=10_000,
        epochs=1,
        pgd_steps=20,
        pgd_alpha=0.02,
        pgd_adv_weight=0.5,
        denoiser_epochs=2,
        denoiser_train_limit=10_000,
        vae_epochs=5,
        vae_train_limit=None,
        extra={
            "pcl_warmup_epochs": 1,
            "pcl-pgd_warmup_epochs": 1,
            "pcl-pgd_steps": 20,
            "pcl-pgd_alpha": 0.02,
            "vae_n_validation": 1000,
        },
    ),
    "smoke": DefenseSettings(
        train_limit=1000,
        epochs=1,
        pgd_steps=3,
        pgd_alpha=0.1,
        static_models=("B",),
        denoiser_epochs=1,
        denoiser_train_limit=2000,
        vae_epochs=1,
        vae_train_limit=2000,
        extra={
            "pcl_warmup_epochs": 1,
            "pcl-pgd_warmup_epochs": 1,
            "pcl-pgd_steps": 3,
            "pcl-pgd_alpha": 0.1,
            "vae_n_validation": 200,
        },
    ),
}
#: Each attack's options: the CPU default, and the paper preset's changes. FGSM at the defense
#: table's 0.3; stAdv at the paper's tau 0.05, kappa 0; C&W with a short binary search that
#: starts at c = 1e-2 (the reference code: 9 steps x 10,000 iterations from c = 1e-3);
#: DeepFool (L2, overshoot 0.02, 50 iterations) and JSMA (theta 1, gamma 14.5 %) at their
#: papers' settings; the few-pixel attack with 3 pixels and differential evolution of 100
#: candidates over 20 generations on a CPU (Su et al.'s 400 x 100 with ``--preset paper``).
ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "fgsm": {"epsilon": 0.3},
    "cw": {"binary_search_steps": 5, "max_iterations": 200, "initial_const": 1e-2},
    "stadv": {"tau": 0.05, "kappa": 0.0},
    "pgd": {"epsilon": 0.3, "alpha": 0.01, "steps": 40},
    "deepfool": {"norm": "l2", "overshoot": 0.02, "max_iterations": 50},
    "jsma": {"theta": 1.0, "gamma": 0.145},
    "few-pixel": {"pixels": 3, "population": 100, "generations": 20},
}
PAPER_ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "cw": {"binary_search_steps": 9, "max_iterations": 10_000, "initial_const": 1e-3},
    "few-pixel": {"population": 400, "generations": 100},
}
SMOKE_ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "cw": {"binary_search_steps": 2, "max_iterations": 20},
    "stadv": {"max_iterations": 20},
    "pgd": {"steps": 5},
    "deepfool": {"max_iterations": 5},
    "jsma": {"gamma": 0.02},
    "few-pixel": {"population": 10, "generations": 2},
}
#: Attacks that take no targets (run untargeted in every sweep) and attacks that need them.
UNTARGETED_ONLY: tuple[str, ...] = ("deepfool",)
TARGETED_ONLY: tuple[str, ...] = ("jsma",)
#: The default attacks and defenses of the sweep: every registered one (but PGD, the
#: attack: the table's L-inf attack is FGSM at the same epsilon).
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "cw", "stadv", "deepfool", "jsma", "few-pixel")
DEFAULT_DEFENSES: tuple[str, ...] = tuple(DEFENSES)


@dataclass(frozen=True)
class DefenseSpec:
    """Everything that defines the defense sweep's trials (JSON-serialisable, for ``--resume``)."""

    sweep: str
    models: tuple[str, ...] = ("A", "B", "C")
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    defenses: tuple[str, ...] = DEFAULT_DEFENSES
    dataset: str = "mnist"
    n_images: int = 30
    targets: str = "random"
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str = "cpu"
    settings: DefenseSettings = field(default_factory=lambda: PRESETS["cpu"])
    #: test images for each defended model's clean accuracy (None: the whole split)
    eval_images: int | None = None
    smoke: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DefenseSpec:
        settings = dict(raw["settings"])
        if settings.get("static_models") is not None:
            settings["static_models"] = tuple(settings["static_models"])
        settings["extra"] = dict(settings.get("extra", {}))
        return cls(
            **{
                **raw,
                "models": tuple(raw["models"]),
                "attacks": tuple(raw["attacks"]),
                "defenses": tuple(raw["defenses"]),
                "attack_options": {k: dict(v) for k, v in raw["attack_options"].items()},
                "settings": DefenseSettings(**settings),
            }
        )


def check_names(kind: str, names: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` (without duplicates), each one of ``allowed``; else ``SweepError`` naming it."""
    if not names:
        raise SweepError(f"no {kind}s to sweep")
    try:
        return tuple(dict.fromkeys(check_choice(kind, n, allowed) for n in names))
    except ValueError as err:
        raise SweepError(str(err)) from None


def check_settings(s: DefenseSettings) -> None:
    """Each training setting in range (``SweepError`` naming the bad one)."""
    for name in ("train_limit", "epochs", "denoiser_train_limit", "vae_train_limit"):
        value = getattr(s, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise SweepError(f"{name} must be a whole number >= 1 (or unset), got {value!r}")
    for name in ("pgd_steps", "denoiser_epochs", "vae_epochs", "blur_kernel_size"):
        if getattr(s, name) < 1:
            raise SweepError(f"{name} must be >= 1, got {getattr(s, name)!r}")
    if s.blur_kernel_size % 2 == 0:
        raise SweepError(f"blur_kernel_size must be odd, got {s.blur_kernel_size}")
    for name in ("epsilon", "pgd_alpha", "blur_sigma"):
        value = getattr(s, name)
        if not value >= 0 or (name != "epsilon" and value == 0):
            raise SweepError(f"{name} must be a number > 0, got {value!r}")
    if not 0.0 <= s.pgd_adv_weight <= 1.0:
        raise SweepError(f"pgd_adv_weight must be in [0, 1], got {s.pgd_adv_weight!r}")
    if s.static_models is not None:
        if not s.static_models:
            raise SweepError("static_models must name at least one model")
        try:
            [check_model_name(m) for m in s.static_models]
        except ValueError as err:
            raise SweepError(f"static_models: {err}") from None


def attack_options(attack: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of ``attack`` (its defaults overridden by ``options``), validated once by
    the attack's schema; ``SweepError`` naming a bad key or value."""
    return spec_attack_options(make_attack(attack, options))


def variant(defense: str, settings: DefenseSettings) -> str:
    """The store variant of a trained defense (``fgsm``, ``ensemble``, ``pgd``, ``denoiser``)
    under ``settings``: the name of the preset whose settings for it match, else their hash."""
    return defense_store_variant(settings.defense(defense), variant_suffix(defense, settings))


def variant_suffix(defense: str, settings: DefenseSettings) -> str:
    """The preset name (``cpu``, ``smoke``; ``""`` for the paper's) whose settings for
    ``defense`` are ``settings``', else ``t<hash>``."""
    mine = settings.relevant(defense)
    names = [n for n, preset in PRESETS.items() if preset.relevant(defense) == mine]
    if names:
        return "" if names[0] == "paper" else names[0]
    return "t" + hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:6]


def attack_targets(attack: str, targets: str) -> str:
    """The target protocol ``attack`` runs with in a sweep whose protocol is ``targets``:
    ``"untargeted"`` for :data:`UNTARGETED_ONLY` attacks, else ``targets``; ``SweepError`` for
    a :data:`TARGETED_ONLY` attack in an untargeted sweep."""
    if attack in UNTARGETED_ONLY:
        return "untargeted"
    if attack in TARGETED_ONLY and targets == "untargeted":
        raise SweepError(
            f"attack {attack!r} is targeted only: drop it or choose a target protocol other "
            "than 'untargeted'"
        )
    return targets


def trial_key(spec: DefenseSpec, model: str, defense: str, attack: str, options: Any) -> str:
    """A stable hash of everything that defines a trial's result."""
    ident = {
        "sweep": "defenses",
        "model": model,
        "defense": defense,
        "defense_settings": spec.settings.relevant(defense),
        "attack": attack,
        "dataset": spec.dataset,
        "n_images": spec.n_images,
        "targets": attack_targets(attack, spec.targets),
        "smoke": spec.smoke,
        "options": key_options(options),
    }
    return digest(ident)


def build_defense_points(spec: DefenseSpec) -> list[Point]:
    """One trial per (model, defense, attack), most expensive model first; ``SweepError``
    naming any bad model, attack, defense, option or setting. Every trial logs the views
    (``Point.views``) but in the smoke test, where only the stAdv trials do."""
    models = check_common(spec.models, spec.dataset, spec.n_images, spec.targets)
    attacks = check_names("attack", spec.attacks, tuple(ATTACKS))
    defenses = check_names("defense", spec.defenses, tuple(DEFENSES))
    unknown = sorted(set(spec.attack_options) - set(ATTACKS))
    if unknown:
        raise SweepError(f"options for unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
    check_settings(spec.settings)
    for defense in defenses:
        spec.settings.defense(defense)  # each defense checks its own options
    if spec.eval_images is not None and spec.eval_images < 1:
        raise SweepError(f"eval_images must be >= 1 (or unset), got {spec.eval_images}")
    run_targets = {a: attack_targets(a, spec.targets) for a in attacks}
    made = {a: make_attack(a, spec.attack_options.get(a, {})) for a in attacks}
    options = {a: spec_attack_options(made[a]) for a in attacks}
    points = []
    for model in sorted(dict.fromkeys(models), key=lambda m: -MODEL_COST.get(m, 1.0)):
        for defense in defenses:
            for attack in attacks:
                key = trial_key(spec, model, defense, attack, options[attack])
                label = f"{model} {DEFENSE_LABELS[defense]} {ATTACK_LABELS[attack]}"
                points.append(
                    Point(
                        model=model,
                        attack=made[attack],
                        key=key,
                        label=label,
                        weights=f"{model}/{defense}",
                        params={"defense": defense, "targets": run_targets[attack]},
                        # the smoke test's 60 trials: the views of the stAdv column only
                        views=not spec.smoke or attack == "stadv",
                    )
                )
    return points
